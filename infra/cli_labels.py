"""``s2a labels ...``."""

from __future__ import annotations

import click


@click.group()
def labels() -> None:
    """(being built)"""
