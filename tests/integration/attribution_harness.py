"""Running ``cps-attribution run`` for tests, feeding it orders and reading its decisions."""

from __future__ import annotations

import asyncio
import collections
import os
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

import ledger_db
from contracts.attribution import AttributionDecision
from contracts.keys import KeyRing
from contracts.topics import ATTRIBUTIONS_TOPIC, ORDERS_TOPIC
from devstack.kafka_admin import read_topic
from devstack.processes import ManagedProcess, free_port, port_accepts
from ledger_db import master_data

DAY_MS = 86_400_000


class AttributionProcess:
    """``python -m attribution_worker.cli run --role ROLE`` in a child process."""

    def __init__(self, tmp: Path, *, database_url: str, kafka: str, redis: str,
                 cookie_keys: KeyRing, store: str = "redis", bigtable_host: str | None = None,
                 env: Mapping[str, str] | None = None, name: str = "attribution",
                 role: str = "all") -> None:
        self.port = free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CPS_")},
            "CPS_DATABASE_URL": database_url, "CPS_KAFKA_BOOTSTRAP": kafka,
            "CPS_REDIS_URL": redis, "CPS_CLICK_STORE": store,
            "CPS_COOKIE_KEYS": cookie_keys.to_text(), "CPS_HTTP_PORT": str(self.port),
            "CPS_ATTRIBUTION_RETRY_SCHEDULE_S": "1,2", "CPS_POLL_INTERVAL_MS": "100",
            **({"BIGTABLE_EMULATOR_HOST": bigtable_host} if bigtable_host else {}),
            **(env or {}),
        }
        self.proc = ManagedProcess([sys.executable, "-m", "attribution_worker.cli", "run",
                                    "--role", role],
                                   log_path=tmp / f"{name}-{self.port}.log", env=self.env,
                                   name=name)

    def start(self, timeout: float = 60) -> AttributionProcess:
        self.proc.start(ready=lambda: port_accepts("127.0.0.1", self.port), timeout=timeout)
        return self

    def stop(self, timeout: float = 30) -> int | None:
        return self.proc.stop(timeout=timeout)

    def kill(self) -> int | None:
        return self.proc.kill()

    def log(self) -> str:
        return self.proc.tail(80)


def set_up_master_data(database_url: str, now_ms: int) -> None:
    """Shop s1 in CPS (authorises channel live), shop s2 not in CPS (authorises live)."""
    ledger_db.migrate(database_url)
    engine = ledger_db.connect(database_url)
    try:
        with engine.begin() as conn:
            for shop in ("s1", "s2"):
                master_data.add_shop(conn, shop, now_ms=now_ms - 30 * DAY_MS)
            master_data.join_cps(conn, "s1", now_ms - 30 * DAY_MS)
            master_data.add_channel(conn, "live", now_ms=now_ms - 30 * DAY_MS)
            for shop in ("s1", "s2"):
                master_data.authorise_channel(conn, "live", shop, now_ms - 30 * DAY_MS)
            for promoter in ("p1", "p2"):
                master_data.add_promoter(conn, promoter, now_ms=now_ms - 30 * DAY_MS)
    finally:
        engine.dispose()


def order(order_id: str, *, created: int, shop: str = "s1", buyer: str | None = None,
          token: str | None = None, fanstype: str | None = None, channel: str | None = None,
          status: str = "created", paid: int | None = None) -> dict[str, Any]:
    return {"version": 1, "order_id": order_id, "shop_id": shop, "buyer_key": buyer,
            "buyer_account": None, "created_at": created, "status": status,
            "event_ts": paid or created, "paid_at": paid, "received_at": None,
            "final_at": None, "channel_id": channel, "fanstype": fanstype,
            "attribution_token": token,
            "items": [{"item_id": "i1", "product_id": "42", "category_id": "c1",
                       "quantity": 1, "paid_amount": 10_000}], "refunds": []}


async def produce(bootstrap: str, messages: Iterable[tuple[bytes | None, bytes]],
                  topic: str = ORDERS_TOPIC) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=False)
    await producer.start()
    sent = 0
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in messages]
        await asyncio.gather(*futures)
        sent = len(futures)
    finally:
        await producer.stop()
    return sent


def order_message(body: Mapping[str, Any]) -> tuple[bytes, bytes]:
    return str(body["order_id"]).encode(), orjson.dumps(body)


async def decisions_on_topic(bootstrap: str, expected: int, *, timeout_s: float = 60
                             ) -> collections.Counter[str]:
    """Wait until ``expected`` distinct orders are decided; their decision counts by id."""
    deadline = time.monotonic() + timeout_s
    counts: collections.Counter[str] = collections.Counter()
    while time.monotonic() < deadline:
        records = await read_topic(bootstrap, ATTRIBUTIONS_TOPIC, timeout=10)
        counts = collections.Counter(AttributionDecision.from_json(r.value).order_id
                                     for r in records)
        if len(counts) >= expected:
            return counts
        await asyncio.sleep(0.5)
    raise AssertionError(f"{len(counts)} of {expected} orders decided within {timeout_s} s")


async def decisions_by_order(bootstrap: str) -> dict[str, AttributionDecision]:
    records = await read_topic(bootstrap, ATTRIBUTIONS_TOPIC, timeout=10)
    return {d.order_id: d for d in (AttributionDecision.from_json(r.value) for r in records)}
