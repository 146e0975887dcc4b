"""``s2a review``."""

from __future__ import annotations

import click


@click.command()
def review() -> None:
    """(being built)"""
