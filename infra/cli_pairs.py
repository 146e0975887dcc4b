"""``s2a pairs ...``."""

from __future__ import annotations

import click


@click.group()
def pairs() -> None:
    """(being built)"""
