"""``s2a serve`` (the Convert gRPC server) and ``s2a convert`` (its command-line client).

    s2a serve [--host H] [--port P] [--model DIR] [--engine auto|tensorrt|onnxruntime|torch]
              [--no-follow] [--metrics-port P]
    s2a convert IMAGE... -o OUT [--server ADDR] [--crop] [--format png|jpeg|webp]
              [--size PX] [--skip-align] [--style S] [--timeout S] [--json]

``serve`` loads ``--model`` (else the newest complete version of the served model under
``S2A_HOME/models/``), follows ``model-updates`` and stops gracefully on SIGTERM or Ctrl-C.
Its token and TLS files come from ``S2A_SERVING__*`` settings only (never flags: they would
show in the process list).

``convert`` sends each image to the server and writes the answer: with one image and an
``OUT`` that has an image suffix, to that file; otherwise into the folder ``OUT``, as
``<name>.anime.<format>``. ``--json`` prints one object per image (input, output, model, or
the error). Exit status 0 only when every image converted. It sends the bearer token of
``S2A_SERVING__TOKEN``; TLS and mutual TLS clients use :class:`serving.client.ConvertClient`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from infra.cli.kit import settings_of
from infra.output import emit_json

_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


@click.command()
@click.option("--host", default=None, help="listen address (default S2A_SERVING__HOST)")
@click.option("--port", type=int, default=None, help="listen port (default S2A_SERVING__PORT)")
@click.option(
    "--model",
    "model_path",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="version directory to load first (default: the newest under S2A_HOME/models/<name>)",
)
@click.option(
    "--engine",
    type=click.Choice(["auto", "tensorrt", "onnxruntime", "torch"]),
    default=None,
    help="inference engine (default S2A_SERVING__ENGINE: auto = best available)",
)
@click.option("--no-follow", is_flag=True, help="do not follow the model-updates topic")
@click.option("--metrics-port", type=int, default=None, help="serve Prometheus /metrics here")
@click.pass_context
def serve(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    model_path: Path | None,
    engine: str | None,
    no_follow: bool,
    metrics_port: int | None,
) -> None:
    """Run the Convert gRPC server (health, reflection, metrics, hot-swap)."""
    from serving.server import serve as run_server

    settings = settings_of(ctx)
    update: dict[str, Any] = {}
    for key, value in (
        ("host", host),
        ("port", port),
        ("engine", engine),
        ("metrics_port", metrics_port),
    ):
        if value is not None:
            update[key] = value
    if no_follow:
        update["follow_updates"] = False
    serving = settings.serving.model_copy(update=update)
    settings = settings.model_copy(update={"serving": serving})

    def ready(server: Any) -> None:
        click.echo(f"serve: listening on {server.address}", err=True)

    run_server(settings, initial_model=model_path, ready=ready)


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="file or folder")
@click.option("--server", default=None, help="host:port (default S2A_SERVING__SERVER_ADDRESS)")
@click.option("--crop", is_flag=True, help="return the aligned face crop, not the pasted photo")
@click.option("--format", "fmt", type=click.Choice(["png", "jpeg", "webp"]), default=None)
@click.option("--size", type=int, default=0, help="longest side of the answer in px (0: natural)")
@click.option("--skip-align", is_flag=True, help="the images already are aligned face crops")
@click.option("--style", default="", help="a style the model serves (default: its own)")
@click.option("--timeout", "timeout_s", type=float, default=30.0, help="seconds per image")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per image on stdout")
@click.pass_context
def convert(
    ctx: click.Context,
    images: tuple[Path, ...],
    out: Path,
    server: str | None,
    crop: bool,
    fmt: str | None,
    size: int,
    skip_align: bool,
    style: str,
    timeout_s: float,
    as_json: bool,
) -> None:
    """Convert selfies with a running Convert server."""
    from serving.client import ConvertClient
    from serving.errors import ConvertFailed

    settings = settings_of(ctx)
    serving = settings.serving
    single_file = len(images) == 1 and out.suffix.lower() in _SUFFIXES
    fmt = fmt or (_SUFFIXES[out.suffix.lower()] if single_file else "png")
    address = server or serving.server_address
    failures = 0
    with ConvertClient(
        address,
        token=serving.token.get_secret_value() if serving.token else None,
        retries=serving.client_retries,
        timeout_s=timeout_s,
    ) as client:
        for image in images:
            target = out if single_file else out / f"{image.stem}.anime.{_ext(fmt)}"
            row: dict[str, Any] = {"input": str(image)}
            try:
                data = image.read_bytes()
                result = client.convert(
                    data,
                    output="crop" if crop else "paste",
                    format=fmt,
                    size=size,
                    skip_align=skip_align,
                    style=style,
                )
                # Made on the first success only: a run that converts nothing leaves nothing.
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(result.image)
                row |= {"ok": True, "output": str(target), **result.as_dict()}
            except (ConvertFailed, OSError) as exc:
                failures += 1
                reason = exc.reason if isinstance(exc, ConvertFailed) else "unreadable"
                code = exc.code.name if isinstance(exc, ConvertFailed) else "LOCAL"
                message = exc.message if isinstance(exc, ConvertFailed) else str(exc)
                row |= {"ok": False, "code": code, "reason": reason, "error": message}
            if as_json:
                emit_json(row)
            elif row["ok"]:
                click.echo(
                    f"{image} -> {target} ({row['model']['name']} v{row['model']['version']})"
                )
            else:
                click.echo(f"{image}: {row['code']} {row['reason']}: {row['error']}", err=True)
    if failures:
        sys.stderr.write(f"s2a: {failures} of {len(images)} images failed to convert\n")
        sys.exit(1)


def _ext(fmt: str) -> str:
    return "jpg" if fmt == "jpeg" else fmt
