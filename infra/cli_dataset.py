"""``s2a dataset ...``."""

from __future__ import annotations

import click


@click.group()
def dataset() -> None:
    """(being built)"""
