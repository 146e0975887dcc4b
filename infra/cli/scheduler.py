"""``s2a scheduler``: retrain the converter when new data or an erasure calls for it.

    s2a scheduler             run the checks every S2A_SCHEDULE__CHECK_EVERY_S (and the
                              S2A_SCHEDULE__CRON retrain) until Ctrl-C; started by `s2a up`
    s2a scheduler --once      one check now: run a cycle if a trigger is due, then exit

Each champion move is written to the outbox with the move (trainer.registry) and announced
on the ``model-updates`` topic by this process's outbox relay (infra.outbox): at once
after a cycle when a broker answers, else as soon as one does. The relay also sends what
other processes queued (``s2a models promote`` without a broker, review decisions). Any
number of schedulers may run against one database: a lease in SQL lets one cycle run at a
time (trainer/scheduler.py), another lets one relay send at a time.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from infra.cli.kit import settings_of
from infra.output import emit_json
from schemas.model_updates import MODEL_UPDATES_TOPIC, ModelUpdate

if TYPE_CHECKING:
    from infra.outbox import OutboxRelay

log = logging.getLogger(__name__)

#: How long a check waits for another process's relay to send the update it queued.
FLUSH_DEADLINE_S = 10.0


def model_update_publisher(relay: OutboxRelay) -> Callable[[ModelUpdate], None]:
    """The scheduler's ``publish``: the cycle's update is in the outbox already (written
    with the champion move); send what waits now, and raise :class:`BrokerError` when the
    update is still queued (it goes out when a broker answers)."""
    from agents.stores.outbox import backlog
    from infra.errors import BrokerError

    def publish(update: ModelUpdate) -> None:
        delivery = relay.flush(FLUSH_DEADLINE_S)
        if backlog(relay.engine, [MODEL_UPDATES_TOPIC]):
            why = delivery.error or "another process's relay is still sending"
            raise BrokerError(
                f"{update.name} v{update.version} is queued in the outbox, not announced yet "
                f"({why}); it is sent when a broker answers"
            )

    return publish


@click.command()
@click.option("--once", is_flag=True, help="one check now, then exit")
@click.option("--json", "as_json", is_flag=True, help="with --once: what the check did, as JSON")
@click.pass_context
def scheduler(ctx: click.Context, once: bool, as_json: bool) -> None:
    """Run the retrain scheduler (data, erasure and cron triggers; one cycle at a time)."""
    from agents.stores.db import create_engine_for
    from infra.outbox import OutboxRelay
    from schemas.migrate import upgrade
    from trainer.scheduler import build_scheduler, check

    settings = settings_of(ctx)
    upgrade(settings.sql_url)
    engine = create_engine_for(settings.sql_url)
    relay = OutboxRelay(settings, engine)
    publish = model_update_publisher(relay)
    try:
        if once:
            result = check(settings, publish, engine=engine)
            if result.cycle is None or result.cycle.update is None:
                # Nothing new to announce: still send what others left queued.
                relay.flush(FLUSH_DEADLINE_S)
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
        relay.start()
        with contextlib.suppress(KeyboardInterrupt, SystemExit):
            running.start()
    finally:
        relay.stop()
        engine.dispose()
