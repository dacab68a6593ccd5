"""The whole local stack: broker (+ S3 when durable) and Redis, started and stopped together."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from devstack.kafka_admin import ensure_topic
from devstack.redis_server import RedisServer
from devstack.s3 import LocalS3
from devstack.tansu import TansuBroker, TansuStorage

_T = TypeVar("_T")


def _run_coroutine(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` to completion from synchronous code, even inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Called from sync code on an event-loop thread (e.g. a sync fixture used by
    # an async test): asyncio.run would refuse, so use a private loop elsewhere.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


class LocalStack:
    """Tansu + Redis (+ moto S3 for ``storage="s3"``) under one state directory.

    Layout of ``state_dir``: ``logs/`` (one log per server) and ``redis/`` (the
    AOF). Use as ``with LocalStack(...) as stack:`` or ``async with``; either way
    everything started is stopped in reverse order on exit, and a failure
    half-way through start stops whatever was already running before re-raising.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        topics: Mapping[str, int] | None = None,
        storage: TansuStorage = "memory",
        kafka_port: int | None = None,
        redis_port: int | None = None,
        s3_port: int | None = None,
        bucket: str = "tansu",
        redis_appendonly: bool = True,
        topic_timeout: float = 20.0,
    ) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.topics: dict[str, int] = dict(topics or {})
        self.storage: TansuStorage = storage
        self.kafka_port = kafka_port
        self.redis_port = redis_port
        self.s3_port = s3_port
        self.bucket = bucket
        self.redis_appendonly = redis_appendonly
        self.topic_timeout = topic_timeout
        self._broker: TansuBroker | None = None
        self._redis: RedisServer | None = None
        self._s3: LocalS3 | None = None

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def broker(self) -> TansuBroker:
        if self._broker is None:
            raise RuntimeError("LocalStack is not started")
        return self._broker

    @property
    def redis(self) -> RedisServer:
        if self._redis is None:
            raise RuntimeError("LocalStack is not started")
        return self._redis

    @property
    def s3(self) -> LocalS3 | None:
        """The S3 server holding the broker's log, or None with memory storage."""
        return self._s3

    # -- lifecycle -----------------------------------------------------------

    def _start_servers(self) -> None:
        if self.alive:
            raise RuntimeError("LocalStack is already started")
        self._broker = self._redis = None
        self._s3 = None
        try:
            s3_endpoint = None
            if self.storage == "s3":
                self._s3 = LocalS3(self.s3_port, log_dir=self.log_dir).start()
                # Tansu's S3 engine fails at startup if the bucket is missing.
                self._s3.create_bucket(self.bucket)
                s3_endpoint = self._s3.endpoint
            self._broker = TansuBroker(
                self.kafka_port,
                storage=self.storage,
                s3_endpoint=s3_endpoint,
                bucket=self.bucket,
                log_dir=self.log_dir,
            ).start()
            self._redis = RedisServer(
                self.redis_port,
                data_dir=self.state_dir / "redis",
                appendonly=self.redis_appendonly,
                log_dir=self.log_dir,
            ).start()
        except BaseException:
            self.stop()
            raise

    async def _ensure_topics(self) -> None:
        for topic, partitions in self.topics.items():
            await ensure_topic(self.broker.bootstrap, topic, partitions, self.topic_timeout)

    def start(self) -> Self:
        """Start every server and create the topics (blocking)."""
        self._start_servers()
        try:
            _run_coroutine(self._ensure_topics())
        except BaseException:
            self.stop()
            raise
        return self

    async def astart(self) -> Self:
        """Like :meth:`start`, for use inside an event loop.

        Spawning the servers blocks the loop for the second or two their
        readiness polls take; deliberately not offloaded to a thread, because a
        cancelled ``to_thread`` would leave that thread starting servers nobody
        stops.
        """
        self._start_servers()
        try:
            await self._ensure_topics()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop everything that is running, in reverse start order; safe to repeat."""
        errors: list[Exception] = []
        for server in reversed(self._servers()):
            if server is None:
                continue
            try:
                server.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(exc)
        if errors:
            raise errors[0]

    def _servers(self) -> tuple[LocalS3 | None, TansuBroker | None, RedisServer | None]:
        """The servers in start order (None for any not started)."""
        return (self._s3, self._broker, self._redis)

    @property
    def alive(self) -> bool:
        """True while any of the servers is running."""
        return any(server is not None and server.alive for server in self._servers())

    def __enter__(self) -> Self:
        return self if self.alive else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self if self.alive else await self.astart()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
