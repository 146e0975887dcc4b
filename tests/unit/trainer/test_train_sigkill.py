"""A training run killed with SIGKILL resumes from its last checkpoint and ends with the
weights of a run that was never interrupted (pix2pix-lora, a tiny real run in a child
process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from snapshot_fixture import FixtureSnapshot
from test_pix2pix_train import TINY, _run

from infra.waiting import wait_until
from trainer.runs import RUN_JSON, checkpoints

FLAGS = ["--steps", "60", "--checkpoint-every", "2"]


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_weights(
    snapshot: FixtureSnapshot, tmp_path: Path
) -> None:
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    argv = ["base", "--manifest", str(snapshot.manifest_path), *TINY, *FLAGS]
    child = subprocess.Popen(
        [sys.executable, "-m", "trainer.families.pix2pix_lora.train", *argv, "--out", str(cut)],
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def running() -> None:
        if child.poll() is not None:
            raise AssertionError(
                f"training exited early: {child.stderr.read() if child.stderr else ''}"
            )

    # Killed as soon as its second checkpoint is on disk: mid-run, without any warning.
    wait_until(
        lambda: len(checkpoints(cut)) >= 1 and checkpoints(cut)[-1][0] >= 4,
        deadline_s=300,
        what="the run's step-4 checkpoint",
        poll_s=0.02,
        alive=running,
    )
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    assert json.loads((cut / RUN_JSON).read_text())["status"] == "running"  # it never ended
    assert not (cut / "generator.safetensors").exists()

    resumed = _run(snapshot, "base", cut, *FLAGS, "--resume")
    assert resumed["status"] == "complete"
    _run(snapshot, "base", whole, *FLAGS)
    for name in ("generator.safetensors", "discriminator.safetensors"):
        a, b = load_file(whole / name), load_file(cut / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
