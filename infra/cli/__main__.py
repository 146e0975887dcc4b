"""``python -m infra.cli``: the ``s2a`` command without its console script (tests, supervisors)."""

from infra.cli import main

main()
