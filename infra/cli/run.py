"""Verbs that run the system's processes: ``s2a broker``, ``worker``, ``up`` and ``demo``."""

from __future__ import annotations

import contextlib
import signal

import click

from infra.cli.kit import settings_of
from infra.output import emit_json


def _stop_on_sigterm() -> None:
    """Treat SIGTERM (systemd, docker stop, kill) like Ctrl-C, so the children we started
    (broker, worker) are stopped on the way out instead of being orphaned."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


@click.command()
@click.option("--host", default=None, help="listen address (default S2A_BROKER_HOST)")
@click.option("--port", type=int, default=None, help="listen port (default S2A_BROKER_PORT)")
@click.pass_context
def broker(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Run the embedded Kafka-compatible broker (Tansu) in the foreground."""
    from infra.broker import EmbeddedBroker

    settings = settings_of(ctx)
    embedded = EmbeddedBroker(host or settings.broker_host, port or settings.broker_port)
    _stop_on_sigterm()
    with embedded:
        click.echo(f"broker listening on {embedded.bootstrap}", err=True)
        with contextlib.suppress(KeyboardInterrupt):
            embedded.wait()


@click.command()
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run the Faust ingestion worker against the configured broker."""
    from infra.runtime import run_worker

    run_worker(settings_of(ctx))


@click.command()
@click.pass_context
def up(ctx: click.Context) -> None:
    """Start the embedded broker (unless S2A_KAFKA_BOOTSTRAP is set), a worker, the retrain
    scheduler and the Convert server (logs in S2A_HOME/run/)."""
    from infra.runtime import Stack

    settings = settings_of(ctx)
    _stop_on_sigterm()
    with Stack(settings, services=True) as stack:
        click.echo(f"up: broker {settings.bootstrap_servers}, data in {settings.home}", err=True)
        try:
            stack.supervise()
        except KeyboardInterrupt:
            click.echo("stopping", err=True)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="everything the demo did, as JSON on stdout")
@click.option(
    "--base-steps",
    type=click.IntRange(min=1),
    default=None,
    help="training steps of the base model (default: the demo's CPU-sized 40)",
)
@click.option(
    "--lora-steps",
    type=click.IntRange(min=1),
    default=None,
    help="training steps of the LoRA update (default 20)",
)
@click.pass_context
def demo(ctx: click.Context, as_json: bool, base_steps: int | None, lora_steps: int | None) -> None:
    """Run the whole product once on bundled samples, under a fresh S2A_HOME/demo: ingest,
    review, snapshot, train a base and a LoRA update through the gate, serve and hot-swap
    under load, convert held-out selfies, erase a subject; then write one HTML report."""
    from infra.demo.run import BASE_STEPS, LORA_STEPS, run_demo

    result = run_demo(
        settings_of(ctx), base_steps=base_steps or BASE_STEPS, lora_steps=lora_steps or LORA_STEPS
    )
    if as_json:
        emit_json(result.as_dict())
        return
    click.echo(result.summary())
    if problems := result.problems():
        raise click.ClickException("the demo did not go as expected: " + "; ".join(problems))
