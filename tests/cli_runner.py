"""The command line as an operator runs it: ``python -m infra.cli`` in a child process.

A child process, not click's in-process runner, where the test needs what only a real
process has: its own exit code and stderr, the Qdrant local store's one-process lock, a
settings object built from the environment alone.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

#: Enough of PATH for the child to find nothing but the system's tools.
BASE_ENV = {"PATH": "/usr/bin:/bin"}


def run_s2a(
    *args: str,
    home: Path | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run ``s2a ARGS`` with ``S2A_HOME=home`` and ``env`` on top of :data:`BASE_ENV`;
    text output captured. ``check`` raises on a non-zero exit, as ``subprocess.run`` does."""
    full = dict(BASE_ENV)
    if home is not None:
        full["S2A_HOME"] = str(home)
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        env=full,
        capture_output=True,
        text=True,
        check=check,
    )
