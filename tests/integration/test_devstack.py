"""devstack against the real binaries: Tansu, moto_server and redis-server."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from aiokafka import AIOKafkaProducer

from devstack.kafka_admin import TopicNotFoundError, ensure_topic, read_topic
from devstack.processes import (
    LOOPBACK,
    ManagedProcess,
    ServiceStartError,
    free_port,
    port_accepts,
    wait_for_port,
)
from devstack.redis_server import RedisServer, redis_server_binary
from devstack.stack import LocalStack
from devstack.tansu import TansuBroker

pytestmark = pytest.mark.integration

SIGKILLED = -9


async def produce(bootstrap: str, topic: str, numbers: range) -> None:
    """Send one keyed message per number and wait until all are acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        acks = [
            await producer.send(topic, value=f"click-{n}".encode(), key=f"user-{n % 17}".encode())
            for n in numbers
        ]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


def values(records: list[Any]) -> set[bytes]:
    return {r.value for r in records}


def our_children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def client(server: RedisServer, timeout: float = 2.0) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=timeout, socket_connect_timeout=timeout)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[TansuBroker]:
    with TansuBroker(log_dir=tmp_path / "logs") as started:
        yield started


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(data_dir=tmp_path / "redis") as started:
        yield started


# -- Tansu -------------------------------------------------------------------


async def test_memory_broker_reads_back_every_message(broker: TansuBroker) -> None:
    await ensure_topic(broker.bootstrap, "clicks", partitions=3)
    await ensure_topic(broker.bootstrap, "clicks", partitions=3)  # already exists: no error

    await produce(broker.bootstrap, "clicks", range(100))
    records = await read_topic(broker.bootstrap, "clicks", timeout=15)

    assert len(records) == 100
    assert values(records) == {f"click-{n}".encode() for n in range(100)}
    assert {r.partition for r in records} == {0, 1, 2}
    # Ordered by partition, then offset, with no duplicates.
    positions = [(r.partition, r.offset) for r in records]
    assert positions == sorted(set(positions))


async def test_read_topic_does_not_auto_create_unknown_topic(broker: TansuBroker) -> None:
    with pytest.raises(TopicNotFoundError, match="no-such-topic"):
        await read_topic(broker.bootstrap, "no-such-topic", timeout=10)
    with pytest.raises(TopicNotFoundError):
        await read_topic(broker.bootstrap, "no-such-topic", timeout=10)


async def test_empty_topic_reads_as_empty(broker: TansuBroker) -> None:
    await ensure_topic(broker.bootstrap, "empty", partitions=2)
    assert await read_topic(broker.bootstrap, "empty", timeout=10) == []


async def test_ensure_topic_waits_for_a_starting_broker(tmp_path: Path) -> None:
    broker = TansuBroker(log_dir=tmp_path)
    creating = asyncio.create_task(ensure_topic(broker.bootstrap, "late", 2, timeout=15))
    await asyncio.sleep(0.5)  # let it fail to connect a few times first
    assert not creating.done()
    with broker.start():
        await creating
        await produce(broker.bootstrap, "late", range(10))
        assert len(await read_topic(broker.bootstrap, "late", timeout=10)) == 10


async def test_ensure_topic_gives_up_after_timeout() -> None:
    bootstrap = f"{LOOPBACK}:{free_port()}"
    with pytest.raises(TimeoutError, match="could not create topic 'clicks'"):
        await ensure_topic(bootstrap, "clicks", 1, timeout=1)


def test_broker_bootstrap_and_stop(tmp_path: Path) -> None:
    port = free_port()
    broker = TansuBroker(port, log_dir=tmp_path).start()
    assert broker.bootstrap == f"127.0.0.1:{port}"
    assert port_accepts(LOOPBACK, port)
    assert "ready in" in broker.process.tail(5)
    assert broker.stop() is not None
    assert not broker.alive
    assert not port_accepts(LOOPBACK, port)


async def test_s3_broker_keeps_messages_across_sigkill(tmp_path: Path) -> None:
    async with LocalStack(tmp_path, storage="s3", topics={"clicks": 3}) as stack:
        assert stack.s3 is not None
        assert "tansu" in {b["Name"] for b in stack.s3.client().list_buckets()["Buckets"]}
        bootstrap = stack.broker.bootstrap
        await produce(bootstrap, "clicks", range(50))

        assert stack.broker.kill() == SIGKILLED
        assert not port_accepts(LOOPBACK, stack.broker.port)
        stack.broker.restart()
        assert stack.broker.bootstrap == bootstrap

        await produce(bootstrap, "clicks", range(50, 100))
        records = await read_topic(bootstrap, "clicks", timeout=20)

    assert len(records) == 100
    assert values(records) == {f"click-{n}".encode() for n in range(100)}


# -- Redis -------------------------------------------------------------------


def test_redis_keeps_stream_entries_across_sigkill(redis_server: RedisServer) -> None:
    r = client(redis_server)
    ids = [r.xadd("clicks", {"n": str(n)}) for n in range(25)]
    r.close()

    assert redis_server.kill() == SIGKILLED
    redis_server.restart()

    r = client(redis_server)
    try:
        entries = r.xrange("clicks")
    finally:
        r.close()
    assert entries == [(entry_id, {b"n": str(n).encode()}) for n, entry_id in enumerate(ids)]


def test_redis_pause_makes_it_hang_until_resume(redis_server: RedisServer) -> None:
    r = client(redis_server, timeout=0.3)
    try:
        assert r.ping()
        redis_server.pause()
        try:
            assert redis_server.alive
            with pytest.raises(redis.TimeoutError):
                r.ping()
        finally:
            redis_server.resume()
        assert r.ping()
    finally:
        r.close()


def test_redis_url_uses_own_port(redis_server: RedisServer) -> None:
    assert redis_server.port != 6379
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"


# -- processes ---------------------------------------------------------------


def test_start_error_includes_log_tail(tmp_path: Path) -> None:
    proc = ManagedProcess(
        [redis_server_binary(), "--port", str(free_port()), "--no-such-option", "yes"],
        log_path=tmp_path / "bad.log",
    )
    with pytest.raises(ServiceStartError) as err:
        proc.start(ready=lambda: False, timeout=10)
    message = str(err.value)
    assert "exited with code 1" in message
    assert "no-such-option" in message  # redis's own complaint, from the log
    assert not proc.alive


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        " print('ignoring SIGTERM', flush=True); time.sleep(60)"
    )
    proc = ManagedProcess([sys.executable, "-c", stubborn], log_path=tmp_path / "p.log")
    with proc:
        assert proc.alive
        assert proc.pid is not None
        # Own session, so a Ctrl-C aimed at our process group misses it.
        assert os.getsid(proc.pid) == proc.pid
        assert proc.stop(timeout=0.5) == SIGKILLED
    assert "ignoring SIGTERM" in proc.tail(3)


def test_wait_for_port_times_out_clearly() -> None:
    port = free_port()
    with pytest.raises(TimeoutError, match=f"127.0.0.1:{port}"):
        wait_for_port(LOOPBACK, port, timeout=0.3)


# -- LocalStack ----------------------------------------------------------------


async def test_local_stack_starts_and_stops_without_leftovers(tmp_path: Path) -> None:
    before = our_children()
    async with LocalStack(tmp_path, topics={"clicks": 3, "conversions": 1}) as stack:
        assert stack.s3 is None
        started = our_children() - before
        assert len(started) == 2  # tansu + redis-server
        assert await read_topic(stack.broker.bootstrap, "clicks", timeout=10) == []
        r = client(stack.redis)
        assert r.ping()
        r.close()
        ports = [stack.broker.port, stack.redis.port]

    assert not started & our_children()
    assert not any(psutil.pid_exists(pid) for pid in started)
    assert not any(port_accepts(LOOPBACK, port) for port in ports)
    assert (tmp_path / "logs").is_dir()


def test_local_stack_cleans_up_after_failed_start(tmp_path: Path) -> None:
    before = our_children()
    with socket.socket() as squatter:
        squatter.bind((LOOPBACK, 0))
        squatter.listen()
        busy_port = squatter.getsockname()[1]
        stack = LocalStack(tmp_path, redis_port=busy_port)
        with pytest.raises(ServiceStartError, match="redis-server"):
            stack.start()
    assert our_children() == before
    assert not stack.broker.alive


def test_local_stack_as_plain_context_manager_creates_topics(tmp_path: Path) -> None:
    with LocalStack(tmp_path, topics={"clicks": 2}) as stack:
        records = asyncio.run(read_topic(stack.broker.bootstrap, "clicks", timeout=10))
        assert records == []
    assert not stack.broker.alive
    assert not stack.redis.alive


async def test_local_stack_sync_start_inside_event_loop(tmp_path: Path) -> None:
    # The CLI and sync fixtures call start() from code that may already be on
    # an event-loop thread; topic creation must still work there.
    stack = LocalStack(tmp_path, topics={"clicks": 2}).start()
    try:
        assert await read_topic(stack.broker.bootstrap, "clicks", timeout=10) == []
    finally:
        stack.stop()
    assert not stack.broker.alive


def test_without_redis_server_on_path_the_embedded_server_is_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without redis-server gets a pip-installed valkey-server instead."""
    from devstack import redis_server as rs

    monkeypatch.delenv("CPS_DEV_REDIS_SERVER", raising=False)
    monkeypatch.setattr("devstack.redis_server.shutil.which", lambda name: None)
    binary = rs.redis_server_binary()
    assert binary.endswith("valkey-server")
    monkeypatch.setenv("CPS_DEV_REDIS_SERVER", binary)
    server = rs.RedisServer(data_dir=tmp_path / "data", log_dir=tmp_path).start()
    try:
        client = redis.Redis.from_url(server.url)
        client.xadd("s", {"n": 1})
        server.kill()
        server.restart()
        assert redis.Redis.from_url(server.url).xlen("s") == 1
    finally:
        server.stop()
