"""The faces collections: one per embedder, never shared, on qdrant-client's in-memory
engine (the local store's code path)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from qdrant_client import QdrantClient
from records import valid_upload

from agents.errors import EmbedderMismatch, StorageError
from agents.records import EmbeddingSpace, ValidUpload
from agents.sink import DuplicateRule, FaceStore
from agents.stores.blobs import BlobStore
from agents.stores.faces import APPEARANCE_VECTOR, FACE_VECTOR, FaceIndex, faces_collection

DLIB = EmbeddingSpace("dlib-resnet/sha256=0123456789ab", 128)
INCEPTION = EmbeddingSpace("inception-resnet-v1/random-init/seed=0", 512)
FACE_ID = "00000000-0000-0000-0000-000000000001"


def _unit(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    return x / np.linalg.norm(x)


def test_two_embedders_never_share_a_collection() -> None:
    client = QdrantClient(":memory:")
    dlib, inception = FaceIndex(client, DLIB), FaceIndex(client, INCEPTION)
    assert dlib.collection == "faces-dlib-resnet-sha256-0123456789ab"
    assert inception.collection == "faces-inception-resnet-v1-random-init-seed-0"
    # The same face in both spaces: two points, each of its own length.
    dlib.upsert(FACE_ID, {FACE_VECTOR: _unit(128), APPEARANCE_VECTOR: _unit(256)}, {})
    inception.upsert(FACE_ID, {FACE_VECTOR: _unit(512), APPEARANCE_VECTOR: _unit(256)}, {})
    assert dlib.vectors([FACE_ID], FACE_VECTOR)[FACE_ID].shape == (128,)
    assert inception.vectors([FACE_ID], FACE_VECTOR)[FACE_ID].shape == (512,)
    with pytest.raises(StorageError, match="cannot upsert"):
        dlib.upsert(FACE_ID, {FACE_VECTOR: _unit(512), APPEARANCE_VECTOR: _unit(256)}, {})


def test_an_existing_collection_is_found_by_embedder_name_and_checked() -> None:
    client = QdrantClient(":memory:")
    FaceIndex(client, DLIB)
    found = FaceIndex.of_embedder(client, DLIB.name)
    assert found is not None
    assert found.space == DLIB
    assert FaceIndex.of_embedder(client, INCEPTION.name) is None
    # A collection under an embedder's name with vectors of another length is refused.
    with pytest.raises(StorageError, match="holds 128-d face vectors"):
        FaceIndex(client, EmbeddingSpace(DLIB.name, 512))
    assert faces_collection(DLIB.name) == faces_collection(DLIB)


class _NoFaces:
    """The repository's seam the duplicate check reads: nobody has faces yet."""

    def crops_of_subject(self, subject: str) -> dict[str, str]:
        return {}


class _Prepared:
    signature = _unit(256)
    pngs: ClassVar[dict[int, bytes]] = {}


def test_the_store_refuses_a_vector_of_another_embedder(tmp_path: Path) -> None:
    store = FaceStore(
        BlobStore(tmp_path),
        FaceIndex(QdrantClient(":memory:"), DLIB),
        _NoFaces(),  # type: ignore[arg-type]
        duplicates=DuplicateRule(similarity=0.985, identity_gate=None),
        mismatch_distance=None,
    )
    upload = _upload()
    with pytest.raises(EmbedderMismatch, match="not by 'inception-resnet-v1"):
        store.store(
            upload,
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            _unit(512),
            _Prepared(),  # type: ignore[arg-type]
            detector="mtcnn",
            embedder=INCEPTION.name,
            embedder_sha256=None,
            random_init=True,
            measured=[],
        )
    assert store.index.count() == 0
    assert BlobStore(tmp_path).digests() == []


def _upload() -> ValidUpload:
    now = datetime.now(UTC)
    return valid_upload(consent_granted_at=now, submitted_at=now)
