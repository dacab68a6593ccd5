"""Order sync + attribution throughput on PostgreSQL, and attribution delay at a steady rate.

    python -m bench.order_pipeline [--messages 1000000] [--steady-rate 1000] [--steady-s 30]
                                   [--database postgresql|sqlite] [--processes 1|2]

Three measurements in one run, on a fresh Tansu broker, redis-server (the click
store) and a fresh database:

1. **baseline**: a consumer group reads the whole order backlog and does
   nothing with it: what the broker and aiokafka cost by themselves;
2. **pipeline**: one worker (order sync + attributor) drains the same backlog:
   every message applied to the ledger, every order decided.  With
   ``--processes 1`` both run in one process, as ``cps-attribution run`` runs
   them; with ``--processes 2`` (the default) the attributor runs in a process
   of its own, as ``--role ingest`` and ``--role attribute`` split them.
   Reported as messages/s and orders/s and as a ratio to the baseline;
3. **steady**: new orders at ``--steady-rate`` per second for ``--steady-s``
   seconds; attribution delay = decision time - the order's creation time.

The backlog is a realistic mix: 2.5 messages per order (created, paid; every
other order also received), and of the orders 50 % have a click in the store
(CPS on the first look), 10 % only a sealed token naming a stored click, 20 %
are in a shop outside CPS with fanstype (self-operated at once), 20 % have no
evidence (decided ``none`` on the last look of a one-second schedule).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import secrets
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

import ledger_db
from attribution_worker.attributor import Attributor
from attribution_worker.click_store.base import StoredClick
from attribution_worker.click_store.redis_store import RedisClickStore
from attribution_worker.order_sync import OrderSync
from attribution_worker.rules import Policy
from bench import report
from contracts.cookie import CookieSealer
from contracts.ids import new_click_id
from contracts.keys import generate_ring
from contracts.topics import ATTRIBUTIONS_TOPIC, CLICKS_TOPIC, ORDERS_TOPIC, partition_for
from devstack.stack import LocalStack
from ledger_db import master_data, schema

DAY_MS = 86_400_000
PARTITIONS = 4
COOKIES = generate_ring(("c1",))


@dataclass(frozen=True, slots=True)
class Backlog:
    messages: list[tuple[bytes, bytes]]
    orders: int
    clicks: list[StoredClick]


def _order(order_id: str, created: int, kind: int, sealer: CookieSealer,
           click: StoredClick | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "version": 1, "order_id": order_id, "shop_id": "s1", "buyer_key": None,
        "buyer_account": None, "created_at": created, "status": "created",
        "event_ts": created, "paid_at": None, "received_at": None, "final_at": None,
        "channel_id": None, "fanstype": None, "attribution_token": None,
        "items": [{"item_id": "i1", "product_id": "42", "category_id": "c1", "quantity": 1,
                   "paid_amount": 12_345}], "refunds": []}
    if kind < 5 and click is not None:
        body["buyer_key"] = click.buyer_key
    elif kind < 6 and click is not None:
        body["attribution_token"] = sealer.seal_fields(
            click.buyer_key, click.promoter_id, click.channel_id, click.click_id, click.ts_ms,
            click.ts_ms + 15 * DAY_MS).decode()
    elif kind < 8:
        body.update(shop_id="s2", fanstype="fan", channel_id="live")
    else:
        body["buyer_key"] = f"nobody-{order_id}"
    return body


def make_backlog(messages: int, now_ms: int) -> Backlog:
    sealer = CookieSealer(COOKIES)
    out: list[tuple[bytes, bytes]] = []
    clicks: list[StoredClick] = []
    n = 0
    while len(out) < messages:
        order_id = f"o{n}"
        created = now_ms - 3_600_000 + n % 1000
        kind = n % 10
        click = None
        if kind < 6:
            click = StoredClick(click_id=new_click_id(created - 60_000), ts_ms=created - 60_000,
                                buyer_key=f"buyer-{n}", promoter_id="p1", channel_id="live",
                                position_id=None, shop_id="s1", product_id="42", sub_ids=(),
                                link_exp=None)
            clicks.append(click)
        body = _order(order_id, created, kind, sealer, click)
        key = order_id.encode()
        out.append((key, orjson.dumps(body)))
        body.update(status="paid", paid_at=created + 1000, event_ts=created + 1000)
        out.append((key, orjson.dumps(body)))
        if n % 2 == 0:
            body.update(status="received", received_at=created + 2000,
                        event_ts=created + 2000)
            out.append((key, orjson.dumps(body)))
        n += 1
    return Backlog(out[:messages], n, clicks)


async def produce_fast(bootstrap: str, messages: list[tuple[bytes, bytes]]) -> float:
    """Whole batches per partition (no per-message futures): seconds taken."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=False, max_batch_size=1 << 20,
                                max_request_size=4 << 20)
    await producer.start()
    started = time.perf_counter()
    try:
        batches: dict[int, Any] = {}
        pending: list[Any] = []
        for key, value in messages:
            partition = partition_for(key, PARTITIONS)
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                pending.append(await producer.send_batch(batch, ORDERS_TOPIC,
                                                         partition=partition))
                batch = batches[partition] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        for partition, batch in batches.items():
            pending.append(await producer.send_batch(batch, ORDERS_TOPIC, partition=partition))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def baseline(bootstrap: str, total: int) -> float:
    consumer = AIOKafkaConsumer(ORDERS_TOPIC, bootstrap_servers=bootstrap,
                                group_id=f"bench-baseline-{secrets.token_hex(3)}",
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                max_poll_records=2000)
    await consumer.start()
    seen = 0
    started = time.perf_counter()
    try:
        while seen < total:
            batches = await consumer.getmany(timeout_ms=500, max_records=2000)
            seen += sum(len(records) for records in batches.values())
            if batches:
                await consumer.commit()
    finally:
        await consumer.stop()
    return time.perf_counter() - started


def decided(engine: sqlalchemy.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sqlalchemy.select(sqlalchemy.func.count()).select_from(
            schema.attribution_decisions)).scalar_one())


def _attributor(engine: sqlalchemy.Engine, store: RedisClickStore) -> Attributor:
    return Attributor(engine, store, CookieSealer(COOKIES), Policy(), schedule_s=(1,),
                      batch_max=1000, lookup_concurrency=32)


def _attributor_process(database_url: str, redis_url: str, stop: Any) -> None:
    """In its own process (``--processes 2``): the attributor until ``stop`` is set."""
    asyncio.run(_attribute_until(database_url, redis_url, stop))


async def _attribute_until(database_url: str, redis_url: str, stop: Any) -> None:
    engine = ledger_db.connect(database_url)
    store = RedisClickStore(redis_url, retention_ms=30 * DAY_MS)
    stopping = asyncio.Event()
    task = asyncio.create_task(_attributor(engine, store).run(stopping, 0.05))
    while not await asyncio.to_thread(stop.wait, 0.5):
        pass
    stopping.set()
    await task
    await store.close()
    engine.dispose()


class Pipeline:
    """One worker's order sync + attributor (in this process, or the attributor in a
    process of its own), kept running from the backlog into the steady phase (a
    consumer group rejoin would cost the steady phase its first seconds)."""

    def __init__(self, engine: sqlalchemy.Engine, bootstrap: str, store: RedisClickStore,
                 *, database_url: str, redis_url: str, processes: int) -> None:
        self.sync = OrderSync(engine, bootstrap, batch_max=2000)
        self._engine, self._store = engine, store
        self._urls = (database_url, redis_url)
        self._processes = processes
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        context = multiprocessing.get_context("spawn")
        self._process_stop = context.Event()
        self._process = context.Process(target=_attributor_process,
                                        args=(*self._urls, self._process_stop))

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self.sync.run())]
        if self._processes == 1:
            self._tasks.append(asyncio.create_task(
                _attributor(self._engine, self._store).run(self._stop, 0.05)))
        else:
            self._process.start()

    async def stop(self) -> None:
        self.sync.stop()
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._process.pid is not None:
            self._process_stop.set()
            await asyncio.to_thread(self._process.join, 60)


async def drain_backlog(engine: sqlalchemy.Engine, pipe: Pipeline, total_messages: int,
                        orders: int) -> dict[str, float]:
    started = time.perf_counter()
    synced_at = None
    while True:
        await asyncio.sleep(0.25)
        if synced_at is None and pipe.sync.settled >= total_messages:
            synced_at = time.perf_counter() - started
        if await asyncio.to_thread(decided, engine) >= orders:
            break
    finished = time.perf_counter() - started
    return {"synced_s": synced_at or finished, "decided_s": finished}


def set_up(database_url: str, now_ms: int) -> sqlalchemy.Engine:
    ledger_db.migrate(database_url)
    engine = ledger_db.connect(database_url)
    with engine.begin() as conn:
        for shop in ("s1", "s2"):
            master_data.add_shop(conn, shop, now_ms=now_ms - 30 * DAY_MS)
        master_data.join_cps(conn, "s1", now_ms - 30 * DAY_MS)
        master_data.add_channel(conn, "live", now_ms=now_ms - 30 * DAY_MS)
        master_data.authorise_channel(conn, "live", "s2", now_ms - 30 * DAY_MS)
        master_data.add_promoter(conn, "p1", now_ms=now_ms - 30 * DAY_MS)
    return engine


def _steady_producer(bootstrap: str, rate: int, seconds: int) -> None:
    """In its own process: new CPS orders at ``rate``/s, created_at = the moment sent."""
    asyncio.run(_produce_paced(bootstrap, rate, seconds))


async def _produce_paced(bootstrap: str, rate: int, seconds: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=False, linger_ms=1)
    await producer.start()
    sealer = CookieSealer(COOKIES)
    started = time.perf_counter()
    try:
        for n in range(rate * seconds):
            delay = started + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            now_ms = time.time_ns() // 1_000_000
            click = StoredClick(click_id="0" * 28, ts_ms=now_ms - 1000, buyer_key=f"steady-{n}",
                                promoter_id="p1", channel_id="live", position_id=None,
                                shop_id="s1", product_id="42", sub_ids=(), link_exp=None)
            body = _order(f"steady-{n}", now_ms, 0, sealer, click)
            await producer.send(ORDERS_TOPIC, orjson.dumps(body), key=body["order_id"].encode())
        await producer.flush()
    finally:
        await producer.stop()


async def steady(engine: sqlalchemy.Engine, bootstrap: str, store: RedisClickStore, rate: int,
                 seconds: int, already: int) -> dict[str, float]:
    """New CPS orders at ``rate``/s from another process; delay = decided_at - created_at."""
    total = rate * seconds
    now = time.time_ns() // 1_000_000
    # Their clicks are in the store already (made before each order).
    clicks = [StoredClick(click_id=new_click_id(now), ts_ms=now, buyer_key=f"steady-{n}",
                          promoter_id="p1", channel_id="live", position_id=None, shop_id="s1",
                          product_id="42", sub_ids=(), link_exp=None) for n in range(total)]
    for start in range(0, total, 5000):
        await store.put_many(clicks[start:start + 5000])
    producer = multiprocessing.get_context("spawn").Process(
        target=_steady_producer, args=(bootstrap, rate, seconds))
    started = time.perf_counter()
    producer.start()
    await asyncio.to_thread(producer.join)
    produced_s = time.perf_counter() - started
    deadline = time.monotonic() + 120
    while await asyncio.to_thread(decided, engine) < already + total:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    table = schema.attribution_decisions
    with engine.connect() as conn:
        rows = conn.execute(sqlalchemy.select(table.c.decided_at - table.c.order_created_at)
                            .where(table.c.order_id.like("steady-%"))).scalars().all()
    delays = sorted(rows)
    return {"orders": total, "decided": len(delays), "achieved_rate": total / produced_s,
            "p50_ms": _pct(delays, 50), "p90_ms": _pct(delays, 90), "p99_ms": _pct(delays, 99),
            "max_ms": float(delays[-1]) if delays else 0.0}


def _pct(values: list[int], pct: float) -> float:
    if not values:
        return 0.0
    return float(values[min(len(values) - 1, int(len(values) * pct / 100))])


async def run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    now_ms = time.time_ns() // 1_000_000
    results: dict[str, Any] = {"machine": report.machine(), "messages": args.messages,
                               "database": args.database, "processes": args.processes}
    topics = {ORDERS_TOPIC: PARTITIONS, ATTRIBUTIONS_TOPIC: PARTITIONS, CLICKS_TOPIC: 1}
    async with LocalStack(out / "stack", topics=topics, redis_appendonly=False) as stack:
        database_url, drop = _database(args.database, out)
        try:
            engine = set_up(database_url, now_ms)
            store = RedisClickStore(stack.redis.url, retention_ms=30 * DAY_MS)
            backlog = make_backlog(args.messages, now_ms)
            for start in range(0, len(backlog.clicks), 5000):
                await store.put_many(backlog.clicks[start:start + 5000])
            produced_s = await produce_fast(stack.broker.bootstrap, backlog.messages)
            print(f"backlog: {args.messages:,} messages of {backlog.orders:,} orders produced "
                  f"in {produced_s:.1f} s", flush=True)
            base_s = await baseline(stack.broker.bootstrap, args.messages)
            print(f"baseline: {args.messages / base_s:,.0f} messages/s", flush=True)
            pipe = Pipeline(engine, stack.broker.bootstrap, store, database_url=database_url,
                            redis_url=stack.redis.url, processes=args.processes)
            pipe.start()
            timing = await drain_backlog(engine, pipe, args.messages, backlog.orders)
            print(f"pipeline: {args.messages / timing['synced_s']:,.0f} messages/s synced, "
                  f"{backlog.orders / timing['decided_s']:,.0f} orders/s decided", flush=True)
            results.update(orders=backlog.orders, produced_s=produced_s, baseline_s=base_s,
                           **timing)
            if args.steady_s:
                results["steady"] = await steady(engine, stack.broker.bootstrap, store,
                                                 args.steady_rate, args.steady_s,
                                                 backlog.orders)
            await pipe.stop()
            await store.close()
            engine.dispose()
        finally:
            drop()
    return results


def _database(kind: str, out: Path) -> tuple[str, Any]:
    if kind == "sqlite":
        return f"sqlite:///{out / 'ledger.db'}", lambda: None
    admin = sqlalchemy.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                                     isolation_level="AUTOCOMMIT")
    name = f"cps_bench_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", drop


def render(r: dict[str, Any], command: str) -> str:
    mach = r["machine"]
    synced = r["messages"] / r["synced_s"]
    base = r["messages"] / r["baseline_s"]
    lines = [f"## {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: order sync + attribution, "
             f"{r['database']}", "", f"Command: `{command}`  ",
             f"Machine: {mach['cpu']}, {mach['cores']} cores, Linux {mach['kernel']}, Python "
             f"{mach['python']}; {_worker(r.get('processes', 1))}, PostgreSQL, Tansu and "
             "redis-server on the same 2 cores.", "",
             f"Backlog: {r['messages']:,} order messages of {r['orders']:,} orders "
             "(created/paid/received; 50 % click, 10 % token, 20 % self-operated, 20 % none).", "",
             "| run | seconds | messages/s | orders/s decided | vs baseline |",
             "|---|---|---|---|---|",
             f"| baseline: plain consumption | {r['baseline_s']:.1f} | {base:,.0f} | - | 1.00 |",
             f"| order sync (all messages in the ledger) | {r['synced_s']:.1f} | {synced:,.0f} | - "
             f"| {synced / base:.2f} |",
             f"| order sync + attribution (every order decided) | {r['decided_s']:.1f} | "
             f"{r['messages'] / r['decided_s']:,.0f} | {r['orders'] / r['decided_s']:,.0f} | "
             f"{r['baseline_s'] / r['decided_s']:.2f} |", ""]
    steady_r = r.get("steady")
    if steady_r:
        lines += [f"Steady {steady_r['achieved_rate']:,.0f} orders/s for "
                  f"{steady_r['orders']:,} orders (CPS on the first look): attribution delay "
                  f"(decision - order creation) p50 {steady_r['p50_ms']:.0f} ms, p90 "
                  f"{steady_r['p90_ms']:.0f} ms, **p99 {steady_r['p99_ms']:.0f} ms**, max "
                  f"{steady_r['max_ms']:.0f} ms; {steady_r['decided']:,} decided.", ""]
    return "\n".join(lines)


def _worker(processes: int) -> str:
    if processes == 1:
        return "one worker process (order sync + attributor)"
    return "one worker in two processes (order sync; attributor)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.order_pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--steady-rate", type=int, default=1000)
    parser.add_argument("--steady-s", type=int, default=30)
    parser.add_argument("--processes", type=int, choices=(1, 2), default=2,
                        help="the attributor in this process (1) or in its own (2)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = Path(__file__).with_name("out") / f"orders-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    results = asyncio.run(run(args, out))
    report.write_json(results, out / "results.json")
    text = render(results, "python -m bench.order_pipeline " + " ".join(
        sys.argv[1:] if argv is None else argv))
    print(text)
    if not args.no_record:
        report.append_results_md(text + f"\nFiles: `{out}` (results.json).\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
