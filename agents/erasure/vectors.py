"""The subject's Qdrant points, in every faces collection (``faces-<slug>`` and the old
unsuffixed ``faces``), found by face id and by the ``subject`` payload; and the crops their
payloads name, so that a face written to Qdrant whose SQL row never was loses its crops
too."""

from __future__ import annotations

from qdrant_client import QdrantClient, models

from agents.errors import StorageError
from agents.stores.faces import CROPS_PAYLOAD, FACES


def remove_points(client: QdrantClient, pseudonym: str, face_ids: set[str]) -> int:
    """Delete the subject's points in every faces collection; how many the subject had
    (its faces', whether this run or an interrupted one removed them, and any found
    by the payload alone)."""
    by_subject = _of_subject(pseudonym)
    removed = set(face_ids)
    try:
        for name in _faces_collections(client):
            ids = _ids_matching(client, name, by_subject)
            if face_ids:
                ids |= {str(p.id) for p in client.retrieve(name, ids=sorted(face_ids))}
            if not ids:
                continue
            client.delete(name, points_selector=models.PointIdsList(points=sorted(ids)), wait=True)
            client.delete(name, points_selector=models.FilterSelector(filter=by_subject), wait=True)
            removed |= ids
    except Exception as exc:
        raise StorageError(f"cannot delete the subject's points from Qdrant: {exc}") from exc
    return len(removed)


def crops_named_by_points(client: QdrantClient, pseudonym: str, face_ids: set[str]) -> set[str]:
    """The crop digests the subject's points name (``CROPS_PAYLOAD``), in every faces
    collection: the subject's own faces', and any face written but never recorded."""
    named: set[str] = set()
    try:
        for name in _faces_collections(client):
            points = _points_matching(client, name, _of_subject(pseudonym), [CROPS_PAYLOAD])
            if face_ids:
                points += client.retrieve(name, ids=sorted(face_ids), with_payload=[CROPS_PAYLOAD])
            for point in points:
                named.update((point.payload or {}).get(CROPS_PAYLOAD, ()))
    except Exception as exc:  # qdrant-client's errors have no common base (stores.faces)
        raise StorageError(f"cannot read the subject's points from Qdrant: {exc}") from exc
    return named


def _faces_collections(client: QdrantClient) -> list[str]:
    names = [c.name for c in client.get_collections().collections]
    return sorted(n for n in names if n == FACES or n.startswith(f"{FACES}-"))


def _points_matching(
    client: QdrantClient,
    collection: str,
    condition: models.Filter,
    payload: bool | list[str] = False,
) -> list[models.Record]:
    found: list[models.Record] = []
    offset = None
    while True:
        batch, offset = client.scroll(
            collection, scroll_filter=condition, limit=256, offset=offset, with_payload=payload
        )
        found += batch
        if offset is None:
            return found


def _ids_matching(client: QdrantClient, collection: str, condition: models.Filter) -> set[str]:
    return {str(point.id) for point in _points_matching(client, collection, condition)}


def _of_subject(pseudonym: str) -> models.Filter:
    """The Qdrant filter of the points whose payload names ``pseudonym``."""
    return models.Filter(
        must=[models.FieldCondition(key="subject", match=models.MatchValue(value=pseudonym))]
    )
