"""``s2a``: one command, a verb per job.

Conventions scripts rely on: ``--json`` prints JSON only on stdout (logs go to stderr);
exit status 0 only on success, otherwise a one-line reason on stderr.
"""

from __future__ import annotations

import logging
import sys

import click
from pydantic import ValidationError

from agents.errors import PipelineError
from infra.cli.dataset import dataset
from infra.cli.erase import erase
from infra.cli.faces import faces
from infra.cli.labels import labels
from infra.cli.models import models
from infra.cli.pairs import pairs
from infra.cli.refs import refs
from infra.cli.review import review
from infra.cli.reviewers import reviewers
from infra.cli.run import broker, demo, up, worker
from infra.cli.scheduler import scheduler
from infra.cli.serve import convert, serve
from infra.cli.settings import settings_
from infra.cli.train import train
from infra.cli.uploads import publish, status, uploads
from infra.errors import InfraError
from infra.logs import JsonLines, setup_logging
from schemas.errors import SchemaError
from schemas.settings import Settings
from trainer.errors import TrainerError

log = logging.getLogger("s2a")


# A LogRecord's own attributes; any other attribute came from ``extra=`` and is a field.
@click.group()
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING (default from S2A_LOG_LEVEL)")
@click.pass_context
def cli(ctx: click.Context, log_level: str | None) -> None:
    """selfie2anime: consented selfies in, a labelled selfie-to-anime training set out."""
    settings = Settings()
    if log_level:
        settings = settings.model_copy(update={"log_level": log_level})
    setup_logging(settings.log_level, settings.log_format)
    ctx.obj = settings


__all__ = ["JsonLines", "cli", "main", "setup_logging"]

for _verb in (
    broker,
    worker,
    up,
    demo,
    publish,
    uploads,
    status,
    refs,
    faces,
    labels,
    pairs,
    review,
    reviewers,
    dataset,
    train,
    models,
    scheduler,
    erase,
    serve,
    convert,
    settings_,
):
    cli.add_command(_verb)


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        sys.stderr.write("s2a: aborted\n")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (InfraError, SchemaError, PipelineError, TrainerError) as exc:
        sys.stderr.write(f"s2a: {exc}\n")
        sys.exit(1)
    except ValidationError as exc:  # settings from the environment that do not validate
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'settings'}: {error['msg']}"
            for error in exc.errors()
        )
        sys.stderr.write(f"s2a: invalid settings (S2A_* variables): {problems}\n")
        sys.exit(1)
    except Exception as exc:  # the one-line promise holds for bugs too; the log has more
        log.debug("unhandled error", exc_info=True)
        sys.stderr.write(f"s2a: {type(exc).__name__}: {exc}\n")
        sys.exit(1)
