"""The shared outbox (ledger_db.outbox) on a SQLite file: ordering, marking, recovery, lock.

The publisher's logic is tested with a recording ``Producer`` (the Kafka side is
tested against Tansu in tests/integration/test_attribution_decisions.py and
test_billing_charges.py); the database and the file lock are real.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import Engine

import ledger_db
from ledger_db.outbox import (
    OutboxPublisher,
    OutboxRow,
    PublisherLock,
    backlog,
    enqueue_many,
    mark_published,
    next_topics,
    unpublished,
)


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "ledger.db"
    ledger_db.migrate(f"sqlite:///{path}")
    return path


@pytest.fixture
def engine(migrated: Path, tmp_path: Path) -> Iterator[Engine]:
    shutil.copy(migrated, tmp_path / "ledger.db")
    db = ledger_db.connect(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield db
    db.dispose()


class RecordingProducer:
    def __init__(self, *, fail: bool = False, on_topic: Iterable[int] = ()) -> None:
        self.sent: list[OutboxRow] = []
        self.fail = fail
        self.on_topic = set(on_topic)
        self.tail_topics: list[str] = []

    async def send_all(self, rows: Sequence[OutboxRow]) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.extend(rows)

    async def published_ids(self, topics: Iterable[str], tail: int) -> set[int]:
        self.tail_topics = list(topics)
        return set(self.on_topic)


def put(engine: Engine, messages: Sequence[tuple[str, bytes | None, bytes]]) -> None:
    with engine.begin() as conn:
        enqueue_many(conn, messages)


def test_rows_keep_the_order_they_were_enqueued_in(engine: Engine) -> None:
    put(engine, [("a", b"k1", b"1"), ("b", None, b"2")])
    put(engine, [("a", b"k3", b"3")])
    rows = unpublished(engine, 10)
    assert [(r.topic, r.key, r.payload) for r in rows] == [
        ("a", b"k1", b"1"), ("b", None, b"2"), ("a", b"k3", b"3")]
    assert [r.id for r in rows] == sorted(r.id for r in rows)
    assert backlog(engine) == 3
    assert unpublished(engine, 2) == rows[:2]


def test_a_rolled_back_transaction_enqueues_nothing(engine: Engine) -> None:
    with engine.connect() as conn, conn.begin() as transaction:
        enqueue_many(conn, [("a", b"k", b"v")])
        transaction.rollback()  # the caller's own write failed
    assert backlog(engine) == 0
    put(engine, [])  # nothing to add: no statement at all
    assert backlog(engine) == 0


async def test_publish_once_sends_every_topic_in_id_order_then_marks(engine: Engine) -> None:
    put(engine, [("a", b"1", b"x"), ("b", b"2", b"y"), ("a", b"3", b"z")])
    producer = RecordingProducer()
    publisher = OutboxPublisher(engine, producer, batch_max=2)
    assert await publisher.publish_once() == 2
    assert await publisher.publish_once() == 1
    assert await publisher.publish_once() == 0
    assert [r.key for r in producer.sent] == [b"1", b"2", b"3"]
    assert backlog(engine) == 0
    assert publisher.published == 3


async def test_a_failed_send_marks_nothing(engine: Engine) -> None:
    put(engine, [("a", b"1", b"x")])
    with pytest.raises(ConnectionError):
        await OutboxPublisher(engine, RecordingProducer(fail=True)).publish_once()
    assert backlog(engine) == 1


async def test_recovery_reads_the_topics_of_the_next_rows_and_marks_what_it_finds(
        engine: Engine) -> None:
    put(engine, [("charges", b"1", b"x"), ("decisions", b"2", b"y"), ("late", b"3", b"z")])
    first, second, _ = (r.id for r in unpublished(engine, 3))
    producer = RecordingProducer(on_topic={first, second, 10_000})
    publisher = OutboxPublisher(engine, producer, batch_max=2, topics=["given"])
    assert next_topics(engine, 2) == {"charges", "decisions"}
    assert await publisher.recover() == 2, "an id that is no row is ignored"
    assert producer.tail_topics == ["charges", "decisions", "given"]
    assert [r.topic for r in unpublished(engine, 10)] == ["late"]
    assert mark_published(engine, [first]) == 0, "marked once"


async def test_recovery_with_nothing_unpublished_asks_nothing(engine: Engine) -> None:
    producer = RecordingProducer(on_topic={1})
    assert await OutboxPublisher(engine, producer).recover() == 0
    assert producer.tail_topics == []


def test_one_lock_holder_per_sqlite_database(engine: Engine, tmp_path: Path) -> None:
    first, second = PublisherLock(engine), PublisherLock(engine)
    assert first.try_acquire()
    assert first.held
    assert first.try_acquire(), "re-entrant for its holder"
    assert not second.try_acquire()
    assert not second.held
    assert (tmp_path / "ledger.db.outbox.lock").exists()
    first.release()
    assert not first.held
    assert second.try_acquire()
    second.release()
