"""Click persister throughput: a Kafka backlog drained into the click store, clicks/s.

One process, as in production: a backlog of ``--clicks`` edge-shaped click
events (all ``valid``, distinct buyers, 520 bytes each) is produced into a
fresh 4-partition topic on a Tansu broker, then drained by

* **baseline**: plain consumption of the same backlog (a consumer group,
  ``getmany`` batches, offsets committed per batch) with no decoding and no
  store writes: what the broker and aiokafka allow;
* **decode only**: the same plus ``decode_click`` on every record;
* **persister -> Redis**: ``ClickPersister`` into ``RedisClickStore`` (a private
  redis-server with AOF ``everysec``), then again with a fresh group over the
  same backlog (**replay**: every click a duplicate);
* **persister -> Bigtable emulator**: ``ClickPersister`` into ``BigtableClickStore``.

Each run is timed from its first batch to its last record (group joins are
not counted).  This process is pinned to core 0 and the servers to core 1, so
the ratio to the baseline of the same run is the figure to compare across
runs on these shared machines.  Results go to ``bench/out/<stamp>/click_persister.json``
and a markdown table for ``bench/RESULTS.md`` is printed.

    .venv/bin/python -m bench.click_persister [--clicks 200000] [--no-bigtable]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from attribution_worker.click_store.base import ClickStore
from attribution_worker.click_store.decode import decode_click
from attribution_worker.click_store.redis_store import RedisClickStore
from attribution_worker.persister import ClickPersister, CountingMetrics, PersisterConfig
from contracts.clicks import ClickEvent, Verdict
from contracts.ids import new_click_id, new_visitor_id
from contracts.topics import CLICKS_TOPIC, partition_for
from devstack.bigtable import BigtableEmulator, find_emulator_binary
from devstack.kafka_admin import ensure_topic
from devstack.redis_server import RedisServer, redis_server_binary
from devstack.tansu import TansuBroker

PARTITIONS = 4
BENCH_CORE, SERVER_CORE = 0, 1
TARGET_CLICKS_PER_S = 50_000


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _pin(pid: int, core: int) -> None:
    if (os.cpu_count() or 1) > core:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, {core})


# -- the backlog -------------------------------------------------------------------


def backlog_events(n: int, now_ms: int) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` of ``n`` valid clicks as the edge writes them, distinct buyers."""
    out = []
    for i in range(n):
        ts = now_ms - n + i
        buyer = new_visitor_id()
        event = ClickEvent(
            click_id=new_click_id(ts), ts=ts, verdict=Verdict.VALID, reason="",
            buyer_key=buyer, ip=f"10.{i % 250}.{i % 7}.{i % 200}",
            user_agent="Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, "
                       "like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36",
            referer="", promoter_id=f"p{i % 200}", channel_id="live", position_id=None,
            shop_id=None if i % 10 == 0 else f"shop-{i % 50}", product_id=str(i % 1000),
            sub_ids=(), target="https://shop.example.com/item/42?src=live",
            link_sig="ab" * 32, link_kid="k1", link_exp=ts // 1000 + 86_400)
        out.append((buyer.encode(), event.to_json()))
    return out


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    """Whole batches per partition (``create_batch``): per-message send would take minutes."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, max_batch_size=1 << 20,
                                max_request_size=4 << 20)
    await producer.start()
    try:
        by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
        for key, value in records:
            by_partition.setdefault(partition_for(key, PARTITIONS), []).append((key, value))
        pending = []
        for partition, items in by_partition.items():
            batch = producer.create_batch()
            for key, value in items:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    pending.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            pending.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


# -- timed drains ------------------------------------------------------------------


@dataclass
class Timing:
    records: int = 0
    first_s: float | None = None
    last_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def mark(self, n: int, batch_started_s: float) -> None:
        if self.first_s is None:
            self.first_s = batch_started_s
        self.records += n
        self.last_s = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.last_s - (self.first_s or self.last_s)


class TimedMetrics(CountingMetrics):
    def __init__(self) -> None:
        super().__init__()
        self.timing = Timing()

    def batch(self, source: str, records: int, seconds: float) -> None:
        super().batch(source, records, seconds)
        self.timing.mark(records, time.perf_counter() - seconds)


async def until(cond: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("the backlog was not drained in time")
        await asyncio.sleep(0.02)


async def drain_plain(bootstrap: str, topic: str, n: int, group: str, batch: int, *,
                      decode: bool) -> Timing:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=4 * 1024 * 1024,
                                session_timeout_ms=2000, heartbeat_interval_ms=500)
    await consumer.start()
    timing = Timing()
    try:
        while timing.records < n:
            got = await consumer.getmany(timeout_ms=500, max_records=batch)
            if not got:
                continue
            started = time.perf_counter()
            if decode:
                for records in got.values():
                    for record in records:
                        decode_click(record.value)
            await consumer.commit({tp: records[-1].offset + 1 for tp, records in got.items()})
            timing.mark(sum(len(r) for r in got.values()), started)
    finally:
        await consumer.stop()
    return timing


async def drain_persister(store: ClickStore, bootstrap: str, topic: str, n: int, group: str,
                          batch: int) -> Timing:
    metrics = TimedMetrics()
    config = PersisterConfig(bootstrap=bootstrap, topic=topic, group_id=group,
                             batch_max_records=batch, session_timeout_ms=2000,
                             heartbeat_interval_ms=500)
    persister = ClickPersister(store, config, metrics=metrics)
    await persister.start()
    try:
        await until(lambda: metrics.records_total >= n, timeout_s=600)
    finally:
        await persister.stop()
    metrics.timing.extra = {"written": metrics.written_total, "bad": metrics.bad_total}
    return metrics.timing


# -- the run -----------------------------------------------------------------------


@contextlib.contextmanager
def servers(state: Path, bigtable: bool, pin: bool) -> Any:
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(TansuBroker(log_dir=state / "logs"))
        redis_server = stack.enter_context(RedisServer(
            data_dir=state / "redis", appendonly=True, appendfsync="everysec",
            log_dir=state / "logs"))
        emulator = stack.enter_context(BigtableEmulator(log_dir=state / "logs")) \
            if bigtable else None
        for server in (broker, redis_server, emulator):
            if pin and server is not None and server.process.pid is not None:
                _pin(server.process.pid, SERVER_CORE)
        yield broker, redis_server, emulator


@contextlib.asynccontextmanager
async def opened(make: Callable[[], Awaitable[ClickStore]]) -> AsyncIterator[ClickStore]:
    store = await make()
    try:
        yield store
    finally:
        await store.close()


async def run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    n, batch = args.clicks, args.batch
    results: dict[str, Any] = {"clicks": n, "batch": batch, "pinned": args.pin, "runs": {}}
    use_bigtable = not args.no_bigtable and find_emulator_binary() is not None
    with servers(out / "stack", use_bigtable, args.pin) as (broker, redis_server, emulator):
        topic = f"{CLICKS_TOPIC}.bench"
        await ensure_topic(broker.bootstrap, topic, PARTITIONS)
        log(f"producing {n} click events into {topic}")
        started = time.perf_counter()
        await produce(broker.bootstrap, topic, backlog_events(n, time.time_ns() // 1_000_000))
        log(f"produced in {time.perf_counter() - started:.1f}s")
        runs: dict[str, Timing] = {}
        log("baseline: plain consumption")
        runs["baseline"] = await drain_plain(broker.bootstrap, topic, n, "bench-plain", batch,
                                             decode=False)
        log("decode only")
        runs["decode"] = await drain_plain(broker.bootstrap, topic, n, "bench-decode", batch,
                                           decode=True)
        redis_store = RedisClickStore(redis_server.url)
        before = int((await redis_store.redis.info("memory"))["used_memory"])
        log("persister -> Redis")
        runs["redis"] = await drain_persister(redis_store, broker.bootstrap, topic, n,
                                              "bench-redis", batch)
        after = int((await redis_store.redis.info("memory"))["used_memory"])
        runs["redis"].extra["bytes_per_click"] = round((after - before) / n)
        log("persister -> Redis, replay (all duplicates)")
        runs["redis_replay"] = await drain_persister(redis_store, broker.bootstrap, topic, n,
                                                     "bench-redis-replay", batch)
        await redis_store.close()
        if emulator is not None:
            from attribution_worker.click_store.bigtable_store import BigtableClickStore

            log("persister -> Bigtable emulator")
            async with opened(lambda: BigtableClickStore.open(
                    "cps", "cps", "clicks", emulator_host=emulator.emulator_host,
                    create_table=True)) as bt_store:
                runs["bigtable"] = await drain_persister(bt_store, broker.bootstrap, topic, n,
                                                         "bench-bigtable", batch)
    for name, timing in runs.items():
        results["runs"][name] = {"records": timing.records, "seconds": round(timing.seconds, 3),
                                 "per_s": round(timing.records / timing.seconds),
                                 **timing.extra}
    return results


LABELS = {
    "baseline": "baseline: plain consumption (no decode, no store)",
    "decode": "consumption + decode_click",
    "redis": "persister -> Redis",
    "redis_replay": "persister -> Redis, replay (every click a duplicate)",
    "bigtable": "persister -> Bigtable emulator",
}


def markdown(results: dict[str, Any]) -> str:
    runs = results["runs"]
    base = runs["baseline"]["per_s"]
    m = results["machine"]
    placement = (f"process on core {BENCH_CORE}, Tansu, redis-server (AOF everysec) and the "
                 f"Bigtable emulator on core {SERVER_CORE}" if results["pinned"] else
                 "processes placed by the OS; redis-server with AOF everysec")
    lines = [
        f"### Click persister ({m['date']})",
        "",
        f"`{results['command']}`: {results['clicks']:,} valid click events (520 bytes, distinct "
        f"buyers) pre-produced into a fresh {PARTITIONS}-partition Tansu topic, drained by one "
        f"process (batches of {results['batch']:,}); {placement}. "
        f"CPU: {m['cpu']} ({m['cores']} cores); Python {m['python']}, redis-server "
        f"{m['redis_server']}, aiokafka {m['aiokafka']}, google-cloud-bigtable {m['bigtable']}.",
        "",
        "| run | records | seconds | clicks/s | vs baseline |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, label in LABELS.items():
        if name not in runs:
            continue
        r = runs[name]
        lines.append(f"| {label} | {r['records']:,} | {r['seconds']:.2f} | {r['per_s']:,} | "
                     f"{r['per_s'] / base:.2f} |")
    if "bytes_per_click" in runs.get("redis", {}):
        lines.append("")
        lines.append(f"Redis memory: {runs['redis']['bytes_per_click']} bytes per stored click "
                     f"(both keys, expiry entries included). Target: >= "
                     f"{TARGET_CLICKS_PER_S:,} clicks/s into Redis: "
                     f"{'met' if runs['redis']['per_s'] >= TARGET_CLICKS_PER_S else 'NOT met'}.")
    return "\n".join(lines)


def machine() -> dict[str, str]:
    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "-"

    redis_version = subprocess.run([redis_server_binary(), "--version"], capture_output=True,
                                   text=True, check=False).stdout.split()
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu_model(),
            "cores": str(os.cpu_count()), "python": platform.python_version(),
            "redis_server": next((w[2:] for w in redis_version if w.startswith("v=")), "-"),
            "aiokafka": version("aiokafka"), "bigtable": version("google-cloud-bigtable")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.click_persister", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clicks", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=5000, help="records per poll / store write")
    p.add_argument("--no-bigtable", action="store_true", help="skip the emulator run")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="let the OS place processes (default: bench on core 0, servers on 1)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.clicks <= 0 or args.batch <= 0:
        print("--clicks and --batch must be positive", file=sys.stderr)
        return 2
    if args.pin:
        _pin(os.getpid(), BENCH_CORE)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = args.out or Path(__file__).with_name("out") / stamp
    out.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(out)
    results = asyncio.run(run(args, out))
    # The store's AOF (~50 MB) is of no use afterwards; the server logs stay.
    shutil.rmtree(out / "stack" / "redis", ignore_errors=True)
    results["machine"] = machine()
    results["command"] = "python -m bench.click_persister " + " ".join(
        argv if argv is not None else sys.argv[1:])
    (out / "click_persister.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print()
    print(markdown(results))
    print(f"\nresults: {out / 'click_persister.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
