"""``s2a refs ...``."""

from __future__ import annotations

import click


@click.group()
def refs() -> None:
    """(being built)"""
