"""``s2a settings``: every ``S2A_*`` variable with its default and meaning (and, with
``--markdown``, the text of ``SETTINGS.md``)."""

from __future__ import annotations

import click

from infra.output import emit_json, emit_table


@click.command("settings")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per variable")
@click.option("--markdown", is_flag=True, help="SETTINGS.md: one Markdown table per group")
def settings_(as_json: bool, markdown: bool) -> None:
    """List every S2A_* environment variable, its default and what it means."""
    from infra.settings_doc import markdown as render_markdown
    from infra.settings_doc import setting_rows

    if markdown:
        click.echo(render_markdown(), nl=False)
        return
    rows = setting_rows()
    if as_json:
        emit_json([row.as_dict() for row in rows])
        return
    emit_table(
        [(r.variable, r.default, r.meaning) for r in rows], ("variable", "default", "meaning")
    )
