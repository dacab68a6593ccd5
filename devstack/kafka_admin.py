"""Topic creation and whole-topic reads against the local broker.

Beware: Tansu auto-creates a topic (with 4 partitions) when a client asks for
metadata of an unknown topic, e.g. a producer sending to it.
Call :func:`ensure_topic` before anything else touches a topic, or the topic
will exist with the wrong number of partitions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

log = logging.getLogger(__name__)

_RETRY_DELAY = 0.2


class TopicNotFoundError(LookupError):
    """The topic to read does not exist on the broker."""


async def _create_once(bootstrap: str, topic: str, partitions: int, timeout_ms: int) -> int:
    """One CreateTopics round trip; return the per-topic error code."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms)
    try:
        await admin.start()
        response = await admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=1)],
            timeout_ms=timeout_ms,
        )
        existing = None
        for result in response.to_object()["topic_errors"]:
            if result["topic"] == topic:
                code = int(result["error_code"])
                if code == TopicAlreadyExistsError.errno:
                    existing = await _partition_count(admin, topic)
                break
        else:
            raise KafkaError(f"CreateTopics response did not mention {topic!r}: {response}")
    finally:
        await admin.close()
    if existing is not None and existing != partitions:
        # Not fatal (the caller asked to ensure, not to reconfigure), but a
        # mismatch usually means something produced before ensure_topic ran and
        # Tansu auto-created the topic.
        log.warning(
            "topic %r already exists with %d partitions, not the %d asked for",
            topic,
            existing,
            partitions,
        )
    return code


async def _partition_count(admin: Any, topic: str) -> int:
    # Only called for a topic the broker just said exists, so the metadata
    # request cannot auto-create it.
    described = await admin.describe_topics([topic])
    return sum(len(t["partitions"]) for t in described if t["topic"] == topic)


# A timeout argument rather than asyncio.timeout() around the call: the
# deadline has to span reconnect attempts and the sleeps between them.
async def ensure_topic(
    bootstrap: str,
    topic: str,
    partitions: int,
    timeout: float = 20,  # noqa: ASYNC109
) -> None:
    """Create ``topic`` with ``partitions`` partitions unless it already exists.

    Connection failures and retriable broker errors are retried until
    ``timeout``, so this can run right after the broker process was spawned.
    An existing topic is left as it is, whatever its partition count.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, not {partitions}")
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"could not create topic {topic!r} on {bootstrap} within {timeout:.1f}s"
                f" (last error: {last_error!r})"
            ) from last_error
        try:
            async with asyncio.timeout(remaining):
                code = await _create_once(
                    bootstrap, topic, partitions, max(int(remaining * 1000), 1000)
                )
        except (KafkaError, OSError, TimeoutError) as exc:
            if isinstance(exc, KafkaError) and not exc.retriable:
                raise
            last_error = exc
        else:
            if code in (0, TopicAlreadyExistsError.errno):
                return
            error = for_code(code)
            if not error.retriable:
                raise error(f"creating topic {topic!r} on {bootstrap}")
            last_error = error()
        await asyncio.sleep(min(_RETRY_DELAY, max(deadline - time.monotonic(), 0)))


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    timeout: float,  # noqa: ASYNC109 - sizes request timeouts too
) -> list[Any]:
    """Every record in ``topic`` now, by partition then offset (see ``scan_topic``)."""
    records: list[Any] = []
    await scan_topic(bootstrap, topic, records.append, timeout=timeout)
    return sorted(records, key=lambda r: (r.partition, r.offset))


async def scan_topic(
    bootstrap: str,
    topic: str,
    visit: Callable[[Any], None],
    *,
    timeout: float,  # noqa: ASYNC109 - sizes request timeouts too
) -> int:
    """Call ``visit`` on every record in ``topic`` right now; returns how many.

    Reads each partition from its beginning to its end as snapshotted when
    reading starts (``end_offsets``, corrected by the first fetch's high
    watermark), so a count is stable while producers keep writing, and keeps
    nothing itself: fit for millions of records. No consumer group is used, so
    nothing is committed and concurrent readers do not interfere. Raises
    ``TopicNotFoundError`` for an unknown topic rather than letting the broker
    auto-create it, and ``TimeoutError`` if the records are not all read in time.
    """
    deadline = time.monotonic() + timeout
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=max(int(timeout * 1000), 1000),
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    seen = 0
    try:
        async with asyncio.timeout(timeout):
            await consumer.start()
            # The consumer's bootstrap metadata covers every existing topic;
            # asking for this topic by name instead would auto-create it.
            partition_ids = consumer.partitions_for_topic(topic)
            if not partition_ids:
                raise TopicNotFoundError(f"topic {topic!r} does not exist on {bootstrap}")
            tps = [TopicPartition(topic, p) for p in sorted(partition_ids)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            pending = {tp for tp in tps if await consumer.position(tp) < end[tp]}
            # Tansu's ListOffsets reports the *first* offset of the last record
            # batch + 1, so end_offsets undercounts any partition written in
            # batches. The high watermark in Fetch responses is right: take the
            # first one seen per partition as that partition's real end.
            settled: set[TopicPartition] = set()
            while pending:
                batch_ms = int(min(500.0, max(deadline - time.monotonic(), 0) * 1000))
                fetched = await consumer.getmany(*pending, timeout_ms=batch_ms)
                for tp in pending - settled:
                    highwater = consumer.highwater(tp)
                    if highwater is not None:
                        end[tp] = max(end[tp], highwater)
                        settled.add(tp)
                for tp, batch in fetched.items():
                    for record in batch:
                        if record.offset < end[tp]:
                            visit(record)
                            seen += 1
                for tp in list(pending):
                    if tp in settled and await consumer.position(tp) >= end[tp]:
                        pending.discard(tp)
    except TimeoutError:
        raise TimeoutError(
            f"read only {seen} records of topic {topic!r} on {bootstrap} within {timeout:.1f}s"
        ) from None
    finally:
        # aiokafka (0.14) quirk: stop() right after start(), before the loop has
        # run the consumer's internal no-group task once, raises CancelledError.
        await asyncio.sleep(0)
        await consumer.stop()
    return seen
