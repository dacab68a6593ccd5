"""Throughput of ``order_store.apply_batch`` alone, on a scratch database.

    python -m attribution_worker.order_store_bench [--db URL] [--messages 100000] [--batch 1000]

Without ``--db`` it creates a scratch PostgreSQL database on 127.0.0.1:5432 (user
postgres), migrates it and drops it afterwards.  The workload is the order topic of a
busy shop: every order is created, then paid two batches later, a third of them then
received, items of two lines each; batches of ``--batch`` records like a consumer's poll.
It prints messages per second for the whole run and per phase, and the share of time
spent parsing (``OrderMessage.from_json``), which is the same on any database.
"""

from __future__ import annotations

import argparse
import secrets
import time
from collections.abc import Iterator

import orjson
import sqlalchemy

import ledger_db
from attribution_worker.order_store import IncomingMessage, OutcomeKind, apply_batch
from contracts.orders import OrderMessage
from ledger_db import master_data

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
T0 = 1_700_000_000_000


def _snapshot(n: int, status: str, event_ts: int) -> bytes:
    obj: dict[str, object] = {
        "version": 1, "order_id": f"o-{n}", "shop_id": f"s-{n % 50}",
        "buyer_key": f"visitor-{n * 7919 % 100_003}", "buyer_account": f"acct-{n}",
        "created_at": T0 + n, "status": status, "event_ts": event_ts,
        "channel_id": "live", "attribution_token": "c1." + "A" * 120,
        "items": [{"item_id": "i-1", "product_id": f"p-{n % 997}", "category_id": "c-1",
                   "quantity": 1, "paid_amount": 10_000 + n % 5000},
                  {"item_id": "i-2", "product_id": f"p-{n % 991}", "category_id": "c-2",
                   "quantity": 2, "paid_amount": 2_500}]}
    if status != "created":
        obj["paid_at"] = T0 + n + 60_000
    if status == "received":
        obj["received_at"] = T0 + n + 120_000
    return orjson.dumps(obj)


def workload(messages: int, batch: int) -> Iterator[list[IncomingMessage]]:
    """Full batches: each order appears as created, paid two batches later and (one in
    three) received two batches after that; new orders fill the rest of each batch."""
    follow_ups: dict[int, list[tuple[int, str]]] = {}
    created = produced = batch_no = 0
    while produced < messages:
        raws = []
        for n, status in follow_ups.pop(batch_no, []):
            raws.append(_snapshot(n, status, T0 + n + (60_000 if status == "paid" else 120_000)))
            if status == "paid" and n % 3 == 0:
                follow_ups.setdefault(batch_no + 2, []).append((n, "received"))
        while len(raws) < min(batch, messages - produced):
            raws.append(_snapshot(created, "created", T0 + created))
            follow_ups.setdefault(batch_no + 2, []).append((created, "paid"))
            created += 1
        yield [IncomingMessage(raw, partition=0, offset=produced + k)
               for k, raw in enumerate(raws)]
        produced += len(raws)
        batch_no += 1


def run(url: str, messages: int, batch: int) -> None:
    engine = ledger_db.connect(url)
    with engine.begin() as conn:
        for shop in range(50):
            master_data.add_shop(conn, f"s-{shop}", now_ms=T0)
        master_data.add_channel(conn, "live", now_ms=T0)
    batches = list(workload(messages, batch))
    total = sum(len(b) for b in batches)
    parse_start = time.perf_counter()
    for records in batches:
        for record in records:
            OrderMessage.from_json(record.raw)
    parse_s = time.perf_counter() - parse_start
    counts = dict.fromkeys(OutcomeKind, 0)
    start = time.perf_counter()
    for records in batches:
        for outcome in apply_batch(engine, records):
            counts[outcome.kind] += 1
    elapsed = time.perf_counter() - start
    replay_start = time.perf_counter()
    for records in batches[:10]:  # a redelivery: everything ignored, nothing written
        apply_batch(engine, records)
    replay_s = (time.perf_counter() - replay_start) / sum(len(b) for b in batches[:10])
    print(f"{engine.dialect.name}: {total} messages in {len(batches)} batches of <= {batch}: "
          f"{elapsed:.2f} s = {total / elapsed:,.0f} messages/s "
          f"({', '.join(f'{k.value} {v}' for k, v in counts.items())})")
    print(f"parsing alone: {parse_s:.2f} s ({parse_s / elapsed:.0%} of apply_batch); "
          f"a redelivered batch: {1 / replay_s:,.0f} messages/s")
    engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--db", help="an existing, empty ledger database URL (migrated here)")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args(argv)
    if args.db:
        ledger_db.migrate(args.db)
        run(args.db, args.messages, args.batch)
        return 0
    admin = sqlalchemy.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"cps_bench_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        url = sqlalchemy.make_url(ADMIN_URL).set(database=name)
        ledger_db.migrate(url)
        run(url.render_as_string(hide_password=False), args.messages, args.batch)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
