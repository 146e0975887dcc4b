"""``s2a train ...``: train the converter on a dataset snapshot.

    s2a train base SNAPSHOT [--steps N] [--out RUN_DIR] [--resume] [--json]
    s2a train lora SNAPSHOT --base BASE_RUN [--parent-adapter RUN_OR_DIR]
                   [--replay OLDER_SNAPSHOT] [--steps N] [--out RUN_DIR] [--resume] [--json]

``SNAPSHOT`` is a snapshot id (``ds-...``, read straight from ``S2A_HOME/datasets``), a
version number or ``latest``. The run directory defaults to
``S2A_HOME/runs/<family>-<mode>-<id>``;
defaults of every other flag come from the ``train`` settings (``S2A_TRAIN__STEPS``, ...),
torch's CPU threads from ``S2A_MODELS__TORCH_THREADS``.
The family's script runs in this process with ``main(parse_args([...]))``, as the scheduler
calls it; for several GPUs run the script under ``accelerate launch`` (README, Training).
"""

from __future__ import annotations

from pathlib import Path

import click

from infra.cli.kit import settings_of
from infra.output import emit_json
from schemas.settings import Settings


def _snapshot_id(settings: Settings, ref: str) -> str:
    from trainer.dataset.snapshot import SNAPSHOT_ID

    if SNAPSHOT_ID.match(ref):
        return ref
    from agents.stores.db import create_engine_for
    from schemas.migrate import upgrade
    from trainer.dataset import find_snapshot

    upgrade(settings.sql_url)
    engine = create_engine_for(settings.sql_url)
    try:
        return find_snapshot(engine, ref).snapshot_id
    finally:
        engine.dispose()


@click.command()
@click.argument("mode", type=click.Choice(["base", "lora"]))
@click.argument("snapshot_ref", metavar="SNAPSHOT")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="default: S2A_TRAIN__STEPS")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="run directory (default: S2A_HOME/runs/<family>-<mode>-<snapshot>)",
)
@click.option("--resume", is_flag=True, help="continue the run in --out from its last checkpoint")
@click.option(
    "--base", "base", type=click.Path(path_type=Path), default=None, help="lora: base run"
)
@click.option(
    "--parent-adapter",
    type=click.Path(path_type=Path),
    default=None,
    help="lora: warm-start from this run's adapter",
)
@click.option("--replay", default=None, metavar="SNAPSHOT", help="lora: replay older pairs")
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--resolution", type=click.IntRange(min=32), default=None)
@click.option("--progressive/--no-progressive", default=None, help="half resolution first")
@click.option("--family", default=None, help="model family (default: S2A_TRAIN__FAMILY)")
@click.option("--json", "as_json", is_flag=True, help="the run's summary as JSON on stdout")
@click.pass_context
def train(
    ctx: click.Context,
    mode: str,
    snapshot_ref: str,
    steps: int | None,
    out: Path | None,
    resume: bool,
    base: Path | None,
    parent_adapter: Path | None,
    replay: str | None,
    batch_size: int | None,
    resolution: int | None,
    progressive: bool | None,
    family: str | None,
    as_json: bool,
) -> None:
    """Train a base converter, or LoRA adapters on a base, from a dataset snapshot."""
    from trainer.dataset.snapshot import manifest_path
    from trainer.families import get_family, script_argv

    settings = settings_of(ctx)
    chosen = get_family(family or settings.train.family)
    snapshot_id = _snapshot_id(settings, snapshot_ref)
    # The family is in the name: two families' runs on one snapshot never share a folder.
    run_dir = out or settings.train_dir / f"{chosen.name}-{mode}-{snapshot_id}"
    options: dict[str, object | None] = {
        "--steps": steps,
        "--batch-size": batch_size,
        "--resolution": resolution,
        "--base": base,
        "--parent-adapter": parent_adapter,
    }
    if replay is not None:
        replay_id = _snapshot_id(settings, replay)
        options["--replay-manifest"] = manifest_path(settings.dataset_dir, replay_id)
    argv = script_argv(settings, mode, snapshot_id, run_dir, options)
    if progressive is not None:
        argv.append("--progressive" if progressive else "--no-progressive")
    if resume:
        argv.append("--resume")
    result = chosen.main(chosen.parse_args(argv, settings.train))
    if as_json:
        emit_json(result)
        return
    click.echo(
        f"{result['status']} {result['mode']} run of {result['family']} on {result['snapshot']}: "
        f"{result['steps']} steps, {result['samples_per_s']} samples/s"
    )
    click.echo(f"run {result['run_dir']}: {', '.join(result['files'])}")
