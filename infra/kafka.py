"""Kafka plumbing for the command line (kafka-python): topics, the upload publisher, lag.

Every producer is sized from ``limits.max_record_bytes`` so that no upload the worker would
accept is refused by a client default (kafka-python's is 1 MiB).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import TopicPartition

from infra.broker import broker_answers
from infra.errors import BrokerError
from schemas import pairs, rejections, uploads
from schemas.pairs import PairRecord
from schemas.rejections import Rejection
from schemas.settings import Settings
from schemas.uploads import UploadEvent

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
P = TypeVar("P", bound="RecordPublisher")
#: Every topic the worker reads or writes; the embedded broker starts without them.
WORKER_TOPICS = (uploads.TOPIC, rejections.TOPIC, pairs.FACES_TOPIC, pairs.PAIRS_TOPIC)


def _connect(client: Callable[..., T], settings: Settings, **options: Any) -> T:
    """A kafka-python client, or a BrokerError that names the address tried.

    Probed first: with no broker listening, kafka-python's clients retry their bootstrap
    for about 30 s before giving up; a refused connection is answered at once.
    """
    if not broker_answers(settings.bootstrap_servers):
        raise BrokerError(
            f"no Kafka broker answers at {settings.bootstrap_servers} (nothing accepts a "
            "connection there): start one with `s2a up`, or set S2A_KAFKA_BOOTSTRAP"
        )
    try:
        return client(bootstrap_servers=settings.bootstrap_servers, **options)
    except KafkaError as exc:
        raise BrokerError(
            f"no Kafka broker answers at {settings.bootstrap_servers}: {exc}"
        ) from exc


def ensure_topics(settings: Settings, names: Iterable[str] = WORKER_TOPICS) -> None:
    """Create the topics if they are missing (the embedded broker starts empty)."""
    admin = _connect(KafkaAdminClient, settings, client_id="s2a-admin")
    try:
        for name in names:
            topic = NewTopic(settings.topic(name), settings.worker.topic_partitions, 1)
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([topic])
    finally:
        admin.close()


class RecordPublisher:
    """Publishes records to one topic and waits for the broker's ack of each.

    Example::

        with RecordPublisher(settings, pairs.PAIRS_TOPIC) as publisher:
            publisher.publish_raw(record.subject.encode(), record.to_bytes())
    """

    def __init__(self, settings: Settings, topic: str, client_id: str = "s2a-publish") -> None:
        self.topic = settings.topic(topic)
        self.producer = _connect(
            KafkaProducer,
            settings,
            client_id=client_id,
            acks="all",
            linger_ms=5,
            max_request_size=settings.limits.max_record_bytes,
        )

    def publish_raw(self, key: bytes | None, value: bytes, timeout_s: float = 30.0) -> None:
        """Send bytes as they are (tests and the demo use it for malformed records)."""
        try:
            self.producer.send(self.topic, key=key, value=value).get(timeout_s)
        except KafkaError as exc:
            raise BrokerError(f"publishing to {self.topic} failed: {exc}") from exc

    def close(self) -> None:
        self.producer.close()

    def __enter__(self: P) -> P:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class UploadPublisher(RecordPublisher):
    """Publishes upload events keyed by their subject (see ``UploadEvent.partition_key``).

    Example::

        with UploadPublisher(settings) as publisher:
            publisher.publish(event)
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, uploads.TOPIC)

    def publish(self, event: UploadEvent) -> None:
        self.publish_raw(event.partition_key(), event.to_bytes())


@dataclass(frozen=True, slots=True)
class Lag:
    """How far the ingest consumer group is behind the end of ``uploads``."""

    end: int
    committed: int

    @property
    def behind(self) -> int:
        return max(self.end - self.committed, 0)


def consumer_lag(settings: Settings) -> Lag:
    """End offsets of ``uploads`` against the ingest group's committed offsets."""
    group = f"{settings.topic_prefix}ingest"
    topic = settings.topic(uploads.TOPIC)
    consumer = _connect(KafkaConsumer, settings, client_id="s2a-status")
    admin = _connect(KafkaAdminClient, settings, client_id="s2a-status")
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        ends = consumer.end_offsets(tps) if tps else {}
        offsets = admin.list_group_offsets({group: tps}).get(group, {}) if tps else {}
        committed = 0
        for tp in tps:
            meta = offsets.get(tp)
            offset = getattr(meta, "offset", meta) if meta is not None else None
            committed += max(int(offset), 0) if offset is not None else 0
        return Lag(end=sum(ends.values()), committed=committed)
    except KafkaError as exc:
        raise BrokerError(f"cannot read offsets from {settings.bootstrap_servers}: {exc}") from exc
    finally:
        consumer.close()
        admin.close()


def read_rejections(settings: Settings, expect: int, timeout_s: float = 30.0) -> list[Rejection]:
    """Records on ``uploads-dlq`` from the beginning, until ``expect`` distinct uploads
    are seen or ``timeout_s`` passes without a new record."""
    return read_records(
        settings,
        rejections.TOPIC,
        Rejection.from_bytes,
        lambda rejection: rejection.upload_id,
        expect,
        timeout_s,
    )


def read_pairs(settings: Settings, expect: int, timeout_s: float = 30.0) -> list[PairRecord]:
    """Records on ``pairs`` from the beginning, until ``expect`` distinct pairs are seen
    or ``timeout_s`` passes without a new record."""
    return read_records(
        settings, pairs.PAIRS_TOPIC, PairRecord.from_bytes, lambda r: r.pair_id, expect, timeout_s
    )


def read_records(
    settings: Settings,
    topic: str,
    parse: Callable[[bytes], R],
    key_of: Callable[[R], str],
    expect: int,
    timeout_s: float = 30.0,
) -> list[R]:
    """Records of ``topic`` from the beginning, until ``expect`` distinct keys are seen or
    ``timeout_s`` passes without a new record."""
    consumer = _connect(
        KafkaConsumer,
        settings,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=int(timeout_s * 1000),
        fetch_max_bytes=max(settings.limits.max_record_bytes, 50 * 1024 * 1024),
        max_partition_fetch_bytes=settings.limits.max_record_bytes,
    )
    consumer.subscribe([settings.topic(topic)])
    found: list[R] = []
    seen: set[str] = set()
    try:
        if expect <= 0:
            return found
        for message in consumer:
            record = parse(message.value)
            found.append(record)
            seen.add(key_of(record))
            if len(seen) >= expect:
                break
        return found
    finally:
        consumer.close()
