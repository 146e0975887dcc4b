"""The subject's aligned crops in the blob store: deleted unless another face or an anime
reference shares them (content-addressed: a shared digest is someone else's image too)."""

from __future__ import annotations

from sqlalchemy import Engine, or_, select

from agents.erasure.tables import FACES, REFS
from agents.errors import StorageError
from agents.stores.blobs import BlobStore
from agents.stores.db import sql_errors


def remove_crops(engine: Engine, blobs: BlobStore, pseudonym: str, crops: set[str]) -> int:
    """Delete the subject's crops that nothing else uses; how many the subject had
    (counted whether this run or an interrupted earlier one removed them)."""
    if not crops:
        return 0
    digests = sorted(crops)
    others = select(FACES.c.crop_256, FACES.c.crop_512).where(
        FACES.c.subject != pseudonym,
        or_(FACES.c.crop_256.in_(digests), FACES.c.crop_512.in_(digests)),
    )
    refs = select(REFS.c.original, REFS.c.training).where(
        or_(REFS.c.original.in_(digests), REFS.c.training.in_(digests))
    )
    with sql_errors("finding shared crops"), engine.connect() as connection:
        shared = {d for row in connection.execute(others) for d in row}
        shared |= {d for row in connection.execute(refs) for d in row}
    own = [digest for digest in digests if digest not in shared]
    try:
        for digest in own:
            blobs.delete(digest)
    except OSError as exc:
        raise StorageError(f"cannot delete a crop under {blobs.where}: {exc}") from exc
    return len(own)
