"""The Redis fallback queue for clicks: a Redis Stream shared by every edge process.

One stream entry holds one batch (fields ``n`` = record count, ``b`` = the
batch encoded by ``contracts.records``).  Writes and acknowledgements run in
MULTI/EXEC together with a counter of pending clicks, so the counter is the
fallback depth in clicks, exact, for the dashboard.

Draining uses a consumer group: each edge process is one consumer, an entry
is acknowledged and deleted only after Kafka acknowledged its records, and
entries left pending by a process that died are claimed by another after
``claim_idle_ms``.  A crash between Kafka's ack and ours replays that entry:
consumers deduplicate by click id.

For the fallback to be durable the Redis server must persist (AOF with
``appendfsync always``, or ``everysec`` accepting up to a second of exposure);
the dev stack and the tests run it that way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Collection
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from contracts.records import BatchFormatError, Record, decode_batch, encode_batch
from contracts.topics import CLICK_FALLBACK_GROUP, CLICK_FALLBACK_PENDING, CLICK_FALLBACK_STREAM

log = logging.getLogger("cps.edge.fallback")

DEAD_LETTER_STREAM = CLICK_FALLBACK_STREAM + ":dead"
T = TypeVar("T")


class RedisUnavailable(Exception):
    """Redis did not answer in time or refused the command."""


class RedisFallback:
    def __init__(self, url: str, *, timeout_s: float, claim_idle_ms: int = 30_000,
                 stream: str = CLICK_FALLBACK_STREAM) -> None:
        self.url = url
        self.stream = stream
        self.pending_key = CLICK_FALLBACK_PENDING if stream == CLICK_FALLBACK_STREAM \
            else stream + ":pending"
        self.timeout_s = timeout_s
        self.claim_idle_ms = claim_idle_ms
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        # No client-side retries: a failing Redis must fail fast so the batch can
        # go to the disk spool within a bounded time.
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self._group_ready = False

    async def _call(self, aw: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(aw, self.timeout_s)
        except (RedisError, OSError, TimeoutError) as err:
            raise RedisUnavailable(f"{type(err).__name__}: {err}") from None

    async def ping(self) -> bool:
        try:
            await self._call(self._redis.ping())
        except RedisUnavailable:
            return False
        return True

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await asyncio.wait_for(self._redis.xgroup_create(
                self.stream, CLICK_FALLBACK_GROUP, id="0", mkstream=True), self.timeout_s)
        except ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise RedisUnavailable(str(err)) from None
        except (RedisError, OSError, TimeoutError) as err:
            raise RedisUnavailable(f"{type(err).__name__}: {err}") from None
        self._group_ready = True

    async def push(self, records: Collection[Record]) -> None:
        """Park a batch; raises ``RedisUnavailable`` if it may not have been stored."""
        data = encode_batch(records)
        pipe = self._redis.pipeline(transaction=True)
        pipe.xadd(self.stream, {"n": len(records), "b": data})
        pipe.incrby(self.pending_key, len(records))
        await self._call(pipe.execute())

    async def pending_clicks(self) -> int:
        value = await self._call(self._redis.get(self.pending_key))
        return int(value or 0)

    async def read(self, count: int = 4) -> list[tuple[bytes, list[Record]]]:
        """Entries to move into Kafka: this consumer's unacked ones, stale ones, then new ones."""
        await self._ensure_group()
        try:
            entries = await self._read_group("0", count)
        except RedisUnavailable as err:
            # A Redis that restarted without its data lost the group with the stream.
            if "NOGROUP" in str(err):
                self._group_ready = False
            raise
        if not entries:
            entries = await self._claim_stale(count)
        if not entries:
            entries = await self._read_group(">", count)
        out: list[tuple[bytes, list[Record]]] = []
        for entry_id, fields in entries:
            try:
                out.append((entry_id, decode_batch(fields[b"b"])))
            except (KeyError, BatchFormatError) as err:
                await self._dead_letter(entry_id, fields, str(err))
        return out

    async def _read_group(self, start: str, count: int) -> list[tuple[bytes, dict[bytes, Any]]]:
        # redis-py's reply types are too loose to be useful here.
        reply: Any = await self._call(self._redis.xreadgroup(
            CLICK_FALLBACK_GROUP, self.consumer, {self.stream: start}, count=count))
        if not reply:
            return []
        # Entries deleted while pending come back with no fields: nothing to move.
        return [(eid, fields) for eid, fields in reply[0][1] if fields]

    async def _claim_stale(self, count: int) -> list[tuple[bytes, dict[bytes, Any]]]:
        reply: Any = await self._call(self._redis.xautoclaim(
            self.stream, CLICK_FALLBACK_GROUP, self.consumer, self.claim_idle_ms, "0-0",
            count=count))
        return [(eid, fields) for eid, fields in reply[1] if fields]

    async def ack(self, entry_id: bytes, count: int) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.xack(self.stream, CLICK_FALLBACK_GROUP, entry_id)
        pipe.xdel(self.stream, entry_id)
        pipe.decrby(self.pending_key, count)
        await self._call(pipe.execute())

    async def _dead_letter(self, entry_id: bytes, fields: dict[Any, Any], why: str) -> None:
        # Unreadable entries are kept aside for a human, never dropped.
        log.error("fallback entry %s is unreadable (%s): moved to %s",
                  entry_id.decode(), why, DEAD_LETTER_STREAM)
        pipe = self._redis.pipeline(transaction=True)
        pipe.xadd(DEAD_LETTER_STREAM, {**fields, b"error": why, b"entry": entry_id})
        pipe.xack(self.stream, CLICK_FALLBACK_GROUP, entry_id)
        pipe.xdel(self.stream, entry_id)
        pipe.decrby(self.pending_key, int(fields.get(b"n", 0) or 0))
        await self._call(pipe.execute())

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(self._redis.aclose(), self.timeout_s)

    async def stream_entries(self) -> int:
        return int(await self._call(self._redis.xlen(self.stream)))
