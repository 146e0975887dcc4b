"""``s2a models ...``: the model registry by hand: list, inspect, promote, roll back, retrain.

    s2a models list [--name NAME] [--json]
    s2a models show VERSION [--name NAME] [--json]
    s2a models promote VERSION --reason WHY [--by WHO] [--name NAME] [--json]
    s2a models rollback --reason WHY [--by WHO] [--name NAME] [--json]
    s2a models retrain [--trigger manual] [--json]
    s2a models prune [--keep N] [--dry-run] [--name NAME] [--json]

``NAME`` defaults to ``S2A_TRAIN__MODEL_NAME`` (``converter``); ``--by`` to ``$USER``.
``promote`` moves ``champion`` by hand (the gate is not asked; the move is audited with
who and why); ``rollback`` moves it back to the champion before the current one.
``retrain`` runs one retrain cycle in this process (``trainer.cycle.run_cycle``), as the
scheduler does, under the same ``retrain`` lease (refused while a cycle runs): snapshot,
train, register, evaluate, promote or refuse. ``prune`` deletes the files of old versions
(``trainer.retention``; each cycle does it too): their rows stay, marked.

A promotion or a rollback writes its ``model-updates`` record to the outbox with the move
(trainer.registry), then tries to send it at once (infra.outbox); without a broker it says
so and the record stays queued: ``s2a scheduler`` (or any outbox relay: ``s2a review``,
the next promote) sends it when a broker answers. ``--json`` prints the move, the record
and ``announced`` (true once the broker acked it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from infra.cli.kit import settings_of
from infra.output import emit_json, emit_table
from schemas.settings import Settings

if TYPE_CHECKING:
    from trainer.registry import Move, Registry

#: How long promote and rollback wait for their update to be acked (when a broker answers).
_ANNOUNCE_S = 10.0


@contextmanager
def _registry(settings: Settings) -> Iterator[Registry]:
    from agents.stores.db import create_engine_for
    from schemas.migrate import upgrade
    from trainer.registry import Registry

    upgrade(settings.sql_url)
    engine = create_engine_for(settings.sql_url)
    try:
        yield Registry(engine, settings.models_dir)
    finally:
        engine.dispose()


_NAME = click.option("--name", default=None, help="model name (default: S2A_TRAIN__MODEL_NAME)")
_JSON = click.option("--json", "as_json", is_flag=True, help="JSON on stdout")
_BY = click.option(
    "--by", envvar="USER", required=True, help="who moves the alias (default: $USER)"
)
_REASON = click.option("--reason", required=True, help="why, kept in the audit trail")


@click.group()
def models() -> None:
    """Registered converter versions and their candidate / champion aliases."""


@models.command("list")
@_NAME
@_JSON
@click.pass_context
def list_versions(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """Every version of the model, oldest first, with its aliases."""
    from trainer.registry import version_dict

    settings = settings_of(ctx)
    model = name or settings.train.model_name
    with _registry(settings) as registry:
        rows = registry.versions(model)
        aliases = registry.aliases(model)
        erased = registry.erasures(model)
    held: dict[int, list[str]] = {}
    for alias, version in sorted(aliases.items()):
        held.setdefault(version, []).append(alias)
    if as_json:
        emit_json(
            {
                "name": model,
                "aliases": aliases,
                "versions": [
                    version_dict(r)
                    | {"aliases": held.get(r.version, []), **_erased(erased.get(r.version))}
                    for r in rows
                ],
            }
        )
        return
    emit_table(
        [
            (
                r.version,
                ",".join(held.get(r.version, [])),
                r.status.value,
                r.family,
                r.snapshot_id,
                r.parent_version,
                r.trigger,
                r.created_at.strftime("%Y-%m-%d %H:%M"),
                "deleted" if r.files_deleted_at is not None else "kept",
                erased[r.version][0] if r.version in erased else None,
            )
            for r in rows
        ],
        [
            "version",
            "aliases",
            "status",
            "family",
            "snapshot",
            "parent",
            "trigger",
            "created",
            "files",
            "erased",
        ],
    )


@models.command()
@click.argument("version", type=click.IntRange(min=1))
@_NAME
@_JSON
@click.option(
    "--log",
    "with_log",
    is_flag=True,
    help="Also print the run's log (the cycle's steps: snapshot, replay, training, gate).",
)
@click.pass_context
def show(ctx: click.Context, version: int, name: str | None, as_json: bool, with_log: bool) -> None:
    """One version: lineage, metrics and gate verdict, files, run plots, alias history
    (and with --log the run's log)."""
    from trainer.assemble import run_files
    from trainer.registry import version_dict

    settings = settings_of(ctx)
    model = name or settings.train.model_name
    with _registry(settings) as registry:
        row = registry.get(model, version)
        aliases = sorted(a for a, v in registry.aliases(model).items() if v == version)
        subjects = len(registry.subjects(model, version))
        erasure = registry.erasures(model).get(version)
        moves = [
            m.as_dict()
            for m in registry.history(model)
            if version in (m.from_version, m.to_version)
        ]
    info: dict[str, Any] = version_dict(row) | {
        "aliases": aliases,
        "subjects": subjects,
        **_erased(erasure),
        "files": run_files(Path(row.run_dir)),
        "alias_moves": moves,
    }
    log_text = _read_log(row.log_path) if with_log else None
    if log_text is not None:
        info["log"] = log_text
    if as_json:
        emit_json(info)
        return
    click.echo(f"{model} v{version} [{', '.join(aliases) or 'no alias'}] {row.status.value}")
    click.echo(f"  family {row.family}, snapshot {row.snapshot_id}, parent {row.parent_version}")
    click.echo(f"  trained on {subjects} subjects; trigger {row.trigger}")
    if erasure is not None:
        click.echo(
            f"  {erasure[0]} of the subjects it was trained on erased since (last at "
            f"{erasure[1]:%Y-%m-%d %H:%M}); a champion is retrained without them"
        )
    if row.reason:
        click.echo(f"  reason: {row.reason}")
    for side in ("candidate", "champion"):
        values = (row.metrics or {}).get(side)
        if values:
            shown = ", ".join(
                f"{k} {v:.4g}" for k, v in values.items() if isinstance(v, int | float)
            )
            click.echo(f"  {side}: {shown}")
    click.echo(f"  version dir {row.path}")
    click.echo(f"  run dir {row.run_dir}; log {row.log_path}")
    if row.files_deleted_at is not None:
        click.echo(f"  files deleted by the retention at {row.files_deleted_at:%Y-%m-%d %H:%M}")
    for label, path in info["files"].items():
        click.echo(f"  {label.replace('_', ' ')}: {path or 'none'}")
    for move in moves:
        click.echo(
            f"  {move['moved_at']} {move['alias']} {move['from_version']} -> "
            f"{move['to_version']} by {move['actor']} ({move['action']}): {move['reason']}"
        )
    if log_text is not None:
        click.echo(f"  log ({row.log_path}):")
        click.echo("\n".join(f"    {line}" for line in log_text.splitlines()))


def _erased(erasure: tuple[int, datetime] | None) -> dict[str, Any]:
    """A version's erasure counts as JSON fields (0 and None when none touched it)."""
    count, last = erasure or (0, None)
    return {"erased_subjects": count, "last_erased_at": last}


def _read_log(path: str | None) -> str | None:
    """The run log's text; a ClickException naming the file when it cannot be read."""
    if not path:
        raise click.ClickException("this version has no run log recorded")
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise click.ClickException(f"cannot read the run log {path}: {exc.strerror}") from exc


def _moved(settings: Settings, registry: Registry, move: Move, as_json: bool) -> None:
    """Send the move's queued update now if a broker answers, and say what happened."""
    from infra.outbox import OutboxRelay

    update, outbox_id = move.update, move.outbox_id
    if update is None or outbox_id is None:  # every champion move queues one
        raise click.ClickException(f"{move.name}@{move.alias} moved but queued no model update")
    delivery = OutboxRelay(settings, registry.engine).flush(_ANNOUNCE_S, outbox_id)
    if as_json:
        emit_json(
            {
                "move": move.as_dict(),
                "update": update.model_dump(mode="json"),
                "announced": delivery.done,
            }
        )
    else:
        click.echo(
            f"{move.name}@champion: v{move.from_version} -> v{move.to_version} by "
            f"{move.actor} ({move.action})"
        )
    if not delivery.done:
        why = delivery.error or "another process's outbox relay has not sent it yet"
        click.echo(
            f"model update queued, not announced yet ({why}); `s2a scheduler` or another "
            "outbox relay sends it on model-updates when a broker answers",
            err=True,
        )


@models.command()
@click.argument("version", type=click.IntRange(min=1))
@_REASON
@_BY
@_NAME
@_JSON
@click.pass_context
def promote(
    ctx: click.Context, version: int, reason: str, by: str, name: str | None, as_json: bool
) -> None:
    """Make VERSION the champion by hand (audited with --by and --reason)."""
    settings = settings_of(ctx)
    model = name or settings.train.model_name
    with _registry(settings) as registry:
        move = registry.promote(model, version, actor=by, reason=reason)
        _moved(settings, registry, move, as_json)


@models.command()
@_REASON
@_BY
@_NAME
@_JSON
@click.pass_context
def rollback(ctx: click.Context, reason: str, by: str, name: str | None, as_json: bool) -> None:
    """Move the champion back to the version that held it before."""
    settings = settings_of(ctx)
    model = name or settings.train.model_name
    with _registry(settings) as registry:
        move = registry.rollback(model, actor=by, reason=reason)
        _moved(settings, registry, move, as_json)


@models.command()
@click.option("--trigger", default="manual", help="recorded on the version")
@click.option("--by", envvar="USER", default="manual", help="who (default: $USER)")
@_JSON
@click.pass_context
def retrain(ctx: click.Context, trigger: str, by: str, as_json: bool) -> None:
    """Run one retrain cycle now: snapshot, train, evaluate, promote or refuse."""
    import os
    import socket

    from agents.stores.db import create_engine_for
    from schemas.migrate import upgrade
    from trainer.cycle import run_cycle
    from trainer.leases import RETRAIN_LEASE, acquire, holder_of, release

    settings = settings_of(ctx)
    upgrade(settings.sql_url)
    engine = create_engine_for(settings.sql_url)
    holder = f"{socket.gethostname()}:{os.getpid()}"
    try:
        # The scheduler's lease: never two cycles at once. Held for up to a day without
        # renewal (one CPU cycle takes minutes to hours); released when the cycle ends.
        if not acquire(engine, RETRAIN_LEASE, holder, ttl_s=24 * 3600):
            held = holder_of(engine, RETRAIN_LEASE)
            who = f"{held[0]} until {held[1]:%Y-%m-%d %H:%M} UTC" if held else "another process"
            raise click.ClickException(f"a retrain is running ({who}); try again after it")
        try:
            result = run_cycle(settings, trigger, engine=engine, actor=by)
        finally:
            release(engine, RETRAIN_LEASE, holder)
        announced = None
        if result.update is not None:  # promoted: its update waits in the outbox
            from infra.outbox import OutboxRelay

            delivery = OutboxRelay(settings, engine).flush(_ANNOUNCE_S)
            announced = delivery.done
            if not delivery.done:
                click.echo(
                    f"model update queued, not announced yet ({delivery.error or 'busy'}); "
                    "`s2a scheduler` or another outbox relay sends it when a broker answers",
                    err=True,
                )
    finally:
        engine.dispose()
    if as_json:
        emit_json(result.as_dict() | {"announced": announced})
    else:
        click.echo(f"{result.status} {result.name} v{result.version}: {result.reason}")
    if result.status == "failed":
        ctx.exit(1)


@models.command()
@click.option(
    "--keep",
    type=click.IntRange(min=1),
    default=None,
    help="newest versions (and rollback champions) whose files stay "
    "(default: S2A_TRAIN__KEEP_VERSIONS)",
)
@click.option("--dry-run", is_flag=True, help="say what would be deleted; delete nothing")
@_NAME
@_JSON
@click.pass_context
def prune(
    ctx: click.Context, keep: int | None, dry_run: bool, name: str | None, as_json: bool
) -> None:
    """Delete the files of old versions; their registry rows stay (trainer.retention)."""
    from agents.stores.db import create_engine_for
    from schemas.migrate import upgrade
    from trainer.registry import Registry
    from trainer.retention import prune_model_files

    settings = settings_of(ctx)
    model = name or settings.train.model_name
    upgrade(settings.sql_url)
    engine = create_engine_for(settings.sql_url)
    try:
        report = prune_model_files(
            Registry.from_settings(settings, engine),
            model,
            keep=keep or settings.train.keep_versions,
            dry_run=dry_run,
        )
    finally:
        engine.dispose()
    if as_json:
        emit_json(report.as_dict())
        return
    emit_table([(v, why) for v, why in sorted(report.kept.items())], ["kept", "why"])
    verb = "would delete" if dry_run else "deleted"
    listed = ", ".join(f"v{v}" for v in report.deleted) or "nothing"
    click.echo(f"{verb} the files of {listed} ({report.freed_bytes / 2**20:.1f} MiB)")
