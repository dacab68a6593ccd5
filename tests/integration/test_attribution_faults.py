"""Two attribution workers in one group, one SIGKILLed mid-batch and restarted.

Real Tansu, Redis and PostgreSQL.  3,000 orders (two thirds with a click in the
store, one third self-operated) are produced while two ``cps-attribution run``
processes share the partitions; one is SIGKILLed while it works and started
again.  Every order must be decided exactly once: one row in
``attribution_decisions`` and one message on ``cps.attributions.v1`` per order,
and the kill must really have hit work in progress.  Both workers must have
consumed orders (the group split the partitions).
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import make_url

import ledger_db
from contracts.attribution import AttributionType
from contracts.clicks import ClickEvent, Verdict, click_record, event_head, event_tail
from contracts.ids import new_click_id
from contracts.keys import generate_ring
from contracts.links import Link
from contracts.topics import ATTRIBUTIONS_TOPIC, CLICKS_TOPIC, ORDERS_TOPIC
from devstack.stack import LocalStack
from ledger_db import schema
from tests.integration.attribution_harness import (
    AttributionProcess,
    decisions_on_topic,
    order,
    order_message,
    produce,
    set_up_master_data,
)
from tests.integration.db import POSTGRES_URL, _postgres_admin

pytestmark = pytest.mark.integration

ORDERS = 3000


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    topics = {CLICKS_TOPIC: 4, ORDERS_TOPIC: 4, ATTRIBUTIONS_TOPIC: 4}
    with LocalStack(tmp_path / "stack", topics=topics) as local:
        yield local


@pytest.fixture
def postgres_url() -> Iterator[str]:
    admin = _postgres_admin()
    name = f"cps_fault_{secrets.token_hex(5)}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def click_message(buyer: str, ts: int) -> tuple[bytes | None, bytes]:
    link = Link(promoter_id="p1", channel_id="live", target="https://shop.example.com/x",
                expires_at=2_000_000_000, shop_id="s1")
    head = event_head(link, sig="ab" * 32, kid="k1")
    tail = event_tail(new_click_id(ts), ts, Verdict.VALID.value, "", buyer, "10.0.0.1",
                      b"Mozilla/5.0", b"")
    _, key, value = click_record(head, tail, ts, buyer)
    ClickEvent.from_json(value)  # what the edge would have written
    return key, value


def _metric_sum(process: AttributionProcess, prefix: str, *, containing: str = "") -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{process.port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix) and containing in line)


def consumed_orders(process: AttributionProcess) -> float:
    return _metric_sum(process, "cps_attribution_messages_total{",
                       containing=f'topic="{ORDERS_TOPIC}"')


async def _until_clicks_stored(processes: tuple[AttributionProcess, ...], count: int,
                               timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    stored = 0.0
    while time.monotonic() < deadline:
        stored = sum([await asyncio.to_thread(_metric_sum, process,
                                              "cps_attribution_clicks_written_total{")
                      for process in processes])
        if stored >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{stored:.0f} of {count} clicks stored within {timeout_s} s")


async def test_sigkilled_worker_loses_and_duplicates_no_decision(
        stack: LocalStack, postgres_url: str, tmp_path: Path) -> None:
    now = time.time_ns() // 1_000_000
    set_up_master_data(postgres_url, now)
    cookies = generate_ring(("c1",))
    common = {"database_url": postgres_url, "kafka": stack.broker.bootstrap,
              "redis": stack.redis.url, "cookie_keys": cookies,
              "env": {"CPS_CONSUMER_BATCH_MAX": "200", "CPS_ATTRIBUTOR_BATCH_MAX": "100"}}
    first = AttributionProcess(tmp_path, name="worker-a", **common).start()  # type: ignore[arg-type]
    second = AttributionProcess(tmp_path, name="worker-b", **common).start()  # type: ignore[arg-type]
    restarted: AttributionProcess | None = None
    try:
        clicks = [click_message(f"buyer-{n}", now - 60_000) for n in range(ORDERS) if n % 3]
        await produce(stack.broker.bootstrap, clicks, topic=CLICKS_TOPIC)
        # The persisters store them first: a lookup that misses would retry on a schedule
        # too short for a loaded machine and decide `none`.
        await _until_clicks_stored((first, second), len(clicks))
        orders = [order_message(order(f"o{n}", created=now, buyer=f"buyer-{n}")) if n % 3 else
                  order_message(order(f"o{n}", created=now, shop="s2", fanstype="fan",
                                      channel="live")) for n in range(ORDERS)]
        producing = asyncio.create_task(produce(stack.broker.bootstrap, orders))
        await _until_some_decided(postgres_url, 300)
        first.kill()  # SIGKILL, in the middle of the stream
        at_kill = _decided(postgres_url)
        await producing
        restarted = AttributionProcess(tmp_path, name="worker-a2", **common).start()  # type: ignore[arg-type]
        counts = await decisions_on_topic(stack.broker.bootstrap, ORDERS, timeout_s=180)
        assert consumed_orders(second) > 0, "the surviving worker had partitions too"
    finally:
        for process in (second, restarted):
            if process is not None:
                process.stop()
    assert at_kill < ORDERS, "the kill hit a worker with work in progress"
    print(f"{at_kill} of {ORDERS} orders decided when worker-a was SIGKILLed")
    twice = {order_id: n for order_id, n in counts.items() if n > 1}
    assert not twice, f"decisions published twice: {list(twice.items())[:5]}"
    assert len(counts) == ORDERS
    engine = ledger_db.connect(postgres_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sqlalchemy.select(
                schema.attribution_decisions.c.attribution_type)).scalars().all()
    finally:
        engine.dispose()
    assert len(rows) == ORDERS
    kinds = collections.Counter(rows)
    assert kinds == {AttributionType.CPS.value: ORDERS * 2 // 3,
                     AttributionType.SELF_OPERATED.value: ORDERS // 3}


def _decided(database_url: str) -> int:
    engine = ledger_db.connect(database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sqlalchemy.select(sqlalchemy.func.count()).select_from(
                schema.attribution_decisions)).scalar_one())
    finally:
        engine.dispose()


async def _until_some_decided(database_url: str, count: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await asyncio.to_thread(_decided, database_url) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} decisions within {timeout_s} s")
