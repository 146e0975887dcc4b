"""``s2a labels ...``: train the label heads on reviewed labels; count what is labelled.

``train`` reads the faces that carry ``human`` labels from SQL and their embeddings from
the Qdrant faces collection of their embedder (its vectors' length is that embedder's: 128
for dlib, 512 for InceptionResnetV1). The embedded Qdrant store may be opened by one process at a
time: while a worker runs on the same data directory, ``train`` says so and stops.

The heads are scored by subject (:mod:`trainer.labels.heads`): every face of one subject
pseudonym is held out together, so a score never rests on a person the head trained on.
The report puts each head's out-of-fold accuracy next to chance, and the share and
accuracy of its guesses at ``settings.pairing.min_model_confidence``, the confidence at
which pairing lets a guess count.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import numpy as np
from sqlalchemy import Engine, Table, func, select
from sqlalchemy.exc import DBAPIError
from sqlmodel import SQLModel

from agents.errors import StorageError
from infra.cli.kit import face_client, settings_of
from infra.output import emit_json, emit_table
from schemas.labels import LEARNABLE, LabelSource
from schemas.settings import Settings
from schemas.tables import Face, Label

_FACES: Table = SQLModel.metadata.tables[Face.__tablename__]
_LABELS: Table = SQLModel.metadata.tables[Label.__tablename__]

#: Face ids per Qdrant retrieve call.
_CHUNK = 500


@click.group()
def labels() -> None:
    """Label heads and label counts (labels: declared, measured, model, human)."""


@labels.command()
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="heads file to write (default: <home>/models/labels/heads.pt, read by the worker)",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="seed dealing subjects into folds"
)
@click.option("--json", "as_json", is_flag=True, help="the heads' metrics as JSON on stdout")
@click.pass_context
def train(ctx: click.Context, out: Path | None, seed: int, as_json: bool) -> None:
    """Train a head per label from the human-reviewed labels, and save them."""
    from agents.stores.faces import FACE_VECTOR

    settings = settings_of(ctx)
    engine = _engine(settings)
    embedder, reviewed, subject_of, other_embedder = _reviewed_faces(engine)
    ids = sorted(reviewed)
    found: dict[str, Any] = {}
    dim = 0
    if embedder is not None:
        with face_client(settings) as client:
            index = _face_index(client, embedder)
            if index is not None:
                dim = index.space.dim
                for start in range(0, len(ids), _CHUNK):
                    found.update(index.vectors(ids[start : start + _CHUNK], FACE_VECTOR))
    ids = [face_id for face_id in ids if face_id in found]
    vectors = np.stack([found[i] for i in ids]) if ids else np.zeros((0, dim), np.float32)
    names = sorted({name for face in reviewed.values() for name in face})
    columns = {name: [reviewed[i].get(name) for i in ids] for name in names}
    # Imported once the stores have answered: torch takes seconds to load.
    from agents.labelheads import heads_path
    from trainer.labels.heads import train_heads

    threshold = settings.pairing.min_model_confidence
    heads = train_heads(
        vectors,
        columns,
        subjects=[subject_of[i] for i in ids],
        seed=seed,
        threshold=threshold,
        embedder=embedder,
    )
    path = out or heads_path(settings)
    heads.save(path)
    report = {
        "path": str(path),
        "embedder": embedder,
        "faces": len(ids),
        "without_vector": len(reviewed) - len(ids),
        "other_embedder": other_embedder,
        "heads": heads.metrics,
    }
    if as_json:
        emit_json(report)
        return
    people = len({subject_of[i] for i in ids})
    click.echo(
        f"label heads saved to {path} ({len(ids)} reviewed faces of {people} subjects, "
        f"embedder {embedder})"
    )
    if other_embedder:
        click.echo(f"left out {other_embedder} reviewed faces embedded by another embedder")
    if report["without_vector"]:
        click.echo(f"left out {report['without_vector']} reviewed faces without a vector")
    click.echo(
        f"scored out of fold, by subject; 'sure' = guesses at or above {threshold} "
        "(S2A_PAIRING__MIN_MODEL_CONFIDENCE): their share and accuracy"
    )
    rows = []
    for name, m in heads.metrics.items():
        if "accuracy" not in m:
            rows.append((name, "", "", "", "", "", "", "", "", f"skipped: {m['skipped']}"))
            continue
        # A head scored but not shipped (overconfident) shows its scores and why.
        dropped = ", ".join(f"{v} ({n})" for v, n in m.get("dropped", {}).items())
        notes = [f"too rare: {dropped}" if dropped else "", m.get("skipped", "")]
        sure = m["confident_accuracy"]
        rows.append(
            (
                name,
                ",".join(m["classes"]),
                m["held_out"],
                m["subjects"],
                f"{m['accuracy']:.3f}",
                f"{m['balanced_accuracy']:.3f}",
                f"{m['chance']:.3f}",
                f"{m['confident_share']:.3f}",
                "" if sure is None else f"{sure:.3f}",
                "; ".join(n for n in notes if n),
            )
        )
    emit_table(
        rows,
        (
            "label",
            "values",
            "faces",
            "subjects",
            "accuracy",
            "balanced",
            "chance",
            "sure",
            "sure_acc",
            "note",
        ),
    )


@labels.command()
@click.option("--json", "as_json", is_flag=True, help="the counts as JSON on stdout")
@click.pass_context
def stats(ctx: click.Context, as_json: bool) -> None:
    """How many faces carry each label value, by source (who or what set it)."""
    engine = _engine(settings_of(ctx))
    n = func.count().label("n")
    statement = (
        select(_LABELS.c.name, _LABELS.c.value, _LABELS.c.source, n)
        .group_by(_LABELS.c.name, _LABELS.c.value, _LABELS.c.source)
        .order_by(_LABELS.c.name, _LABELS.c.value, _LABELS.c.source)
    )
    with _storage("labels stats"), engine.connect() as connection:
        faces = int(connection.execute(select(func.count()).select_from(_FACES)).scalar_one())
        counts = [(str(a), str(b), str(c), int(d)) for a, b, c, d in connection.execute(statement)]
    if as_json:
        emit_json(
            {
                "faces": faces,
                "labels": [
                    {"name": name, "value": value, "source": source, "faces": count}
                    for name, value, source, count in counts
                ],
            }
        )
        return
    click.echo(f"{faces} faces")
    emit_table(counts, ("label", "value", "source", "faces"))


# -- reading ----------------------------------------------------------------------------------


def _engine(settings: Settings) -> Engine:
    from agents.stores.db import create_engine_for
    from schemas.migrate import upgrade

    upgrade(settings.sql_url)
    return create_engine_for(settings.sql_url)


def _reviewed_faces(
    engine: Engine,
) -> tuple[str | None, dict[str, dict[str, str]], dict[str, str], int]:
    """``(embedder, {face_id: {name: value}}, {face_id: subject}, left out)``: the human
    labels of learnable names, on faces of the embedder that made the newest face, and the
    subject pseudonym of each such face (the unit the heads are held out by).

    Heads learn one embedding space; vectors of another embedder (random init against
    trained weights) would mix two spaces, so those faces are left out and counted.
    """
    learnable = [name.value for name in LEARNABLE]
    newest = select(_FACES.c.embedder).order_by(_FACES.c.created_at.desc()).limit(1)
    statement = (
        select(
            _LABELS.c.face_id,
            _LABELS.c.name,
            _LABELS.c.value,
            _FACES.c.embedder,
            _FACES.c.subject,
        )
        .join(_FACES, _FACES.c.face_id == _LABELS.c.face_id)
        .where(_LABELS.c.source == LabelSource.HUMAN.value, _LABELS.c.name.in_(learnable))
        .order_by(_LABELS.c.face_id, _LABELS.c.name)
    )
    with _storage("reading human labels"), engine.connect() as connection:
        embedder = connection.execute(newest).scalar_one_or_none()
        rows = connection.execute(statement).all()
    faces: dict[str, dict[str, str]] = defaultdict(dict)
    subjects: dict[str, str] = {}
    other: set[str] = set()
    for face_id, name, value, face_embedder, subject in rows:
        if face_embedder != embedder:
            other.add(face_id)
            continue
        faces[face_id][name] = value
        subjects[face_id] = subject
    return embedder, dict(faces), subjects, len(other)


def _face_index(client: Any, embedder: str) -> Any:
    """The faces collection of ``embedder`` (None when it has none)."""
    from agents.stores.faces import FaceIndex

    return FaceIndex.of_embedder(client, embedder)


@contextmanager
def _storage(operation: str) -> Iterator[None]:
    """Turn a database failure into a StorageError that says what was being done."""
    try:
        yield
    except DBAPIError as exc:
        cause = exc.orig or exc
        first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        raise StorageError(f"{operation} failed: {type(cause).__name__}: {first_line}") from exc
