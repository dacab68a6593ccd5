"""``cps-attribution`` as support and operators use it: explain, and bad settings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from attribution_worker import cli, pending
from attribution_worker.attributor import Attributor
from attribution_worker.click_store.base import StoredClick
from attribution_worker.click_store.redis_store import RedisClickStore
from attribution_worker.rules import Policy
from contracts.cookie import CookieSealer
from contracts.ids import new_click_id
from contracts.keys import generate_ring
from devstack.redis_server import RedisServer
from ledger_db import connect, schema
from tests.integration.attribution_harness import set_up_master_data

pytestmark = pytest.mark.integration

COOKIES = generate_ring(("c1",))


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with RedisServer(data_dir=tmp_path / "redis", log_dir=tmp_path).start() as server:
        yield server.url


def test_a_missing_setting_is_named_and_exits_2(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CPS_COOKIE_KEYS", raising=False)
    assert cli.main(["explain", "o1"]) == 2
    assert "CPS_COOKIE_KEYS: required but not set" in capsys.readouterr().err
    monkeypatch.setenv("CPS_COOKIE_KEYS", COOKIES.to_text())
    monkeypatch.setenv("CPS_ATTRIBUTION_RETRY_SCHEDULE_S", "10,soon")
    assert cli.main(["run"]) == 2
    assert "CPS_ATTRIBUTION_RETRY_SCHEDULE_S" in capsys.readouterr().err


def test_explain_prints_the_decision_and_every_candidate(
        tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    now = time.time_ns() // 1_000_000
    set_up_master_data(url, now)
    engine = connect(url)
    with engine.begin() as conn:
        conn.execute(schema.orders.insert().values(
            order_id="o-42", shop_id="s1", buyer_key="b42", status="created", created_at=now,
            event_ts=now, updated_at=now))
        pending.enqueue(conn, [("o-42", now)])
    click = StoredClick(click_id=new_click_id(now - 5000), ts_ms=now - 5000, buyer_key="b42",
                        promoter_id="p1", channel_id="live", position_id="pos-7", shop_id="s1",
                        product_id="42", sub_ids=(), link_exp=None)

    async def decide() -> None:
        store = RedisClickStore(redis_url)
        await store.put_many([click])
        await Attributor(engine, store, CookieSealer(COOKIES), Policy(),
                         schedule_s=(10,)).run_once(now_ms=now)
        await store.close()

    asyncio.run(decide())
    engine.dispose()
    for name, value in {"CPS_DATABASE_URL": url, "CPS_REDIS_URL": redis_url,
                        "CPS_COOKIE_KEYS": COOKIES.to_text()}.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["explain", "o-42"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("order o-42: decided cps at attempt 1")
    for label in ("store click on shop", "store site-wide click", "attribution token",
                  "fanstype"):
        assert label in out
    assert click.click_id in out
    assert cli.main(["explain", "o-42", "--json"]) == 0
    parsed = orjson.loads(capsys.readouterr().out)
    assert parsed["decision"]["click_id"] == click.click_id
    assert parsed["now"]["order_id"] == "o-42"
    assert cli.main(["explain", "o-unknown"]) == 1
    assert "no order 'o-unknown'" in capsys.readouterr().err
