"""``s2a scheduler``: retrain the converter when new data or an erasure calls for it.

    s2a scheduler             run the checks every S2A_SCHEDULE__CHECK_EVERY_S (and the
                              S2A_SCHEDULE__CRON retrain) until Ctrl-C; started by `s2a up`
    s2a scheduler --once      one check now: run a cycle if a trigger is due, then exit

Each promotion is announced on the ``model-updates`` topic. Any number of schedulers may
run against one database: a lease in SQL lets one cycle run at a time (trainer/scheduler.py).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import click

from infra.cli.kit import settings_of
from infra.output import emit_json
from schemas.model_updates import MODEL_UPDATES_TOPIC, ModelUpdate
from schemas.settings import Settings

log = logging.getLogger(__name__)


def model_update_publisher(settings: Settings) -> Callable[[ModelUpdate], None]:
    """A publish function for the scheduler: one record on ``model-updates`` per champion
    move, keyed by the model name (its moves stay in order), acked by the broker."""
    from infra.kafka import RecordPublisher, ensure_topics

    def publish(update: ModelUpdate) -> None:
        ensure_topics(settings, (MODEL_UPDATES_TOPIC,))
        with RecordPublisher(settings, MODEL_UPDATES_TOPIC, client_id="s2a-scheduler") as out:
            out.publish_raw(update.key(), update.to_bytes())

    return publish


@click.command()
@click.option("--once", is_flag=True, help="one check now, then exit")
@click.option("--json", "as_json", is_flag=True, help="with --once: what the check did, as JSON")
@click.pass_context
def scheduler(ctx: click.Context, once: bool, as_json: bool) -> None:
    """Run the retrain scheduler (data, erasure and cron triggers; one cycle at a time)."""
    from schemas.migrate import upgrade
    from trainer.scheduler import build_scheduler, check

    settings = settings_of(ctx)
    upgrade(settings.sql_url)
    publish = model_update_publisher(settings)
    if once:
        result = check(settings, publish)
        if as_json:
            emit_json(result.as_dict())
            return
        cycle = result.cycle
        click.echo(
            {
                "busy": "another scheduler is running a cycle",
                "idle": "nothing due",
                "ran": f"{result.trigger.name if result.trigger else ''} cycle: "
                f"{cycle.status if cycle else ''}, {cycle.reason if cycle else ''}",
            }[result.outcome]
        )
        return
    running = build_scheduler(settings, publish)
    click.echo(
        f"scheduler: checking every {settings.schedule.check_every_s:g} s"
        + (f", retrain on cron '{settings.schedule.cron}'" if settings.schedule.cron else ""),
        err=True,
    )
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        running.start()
