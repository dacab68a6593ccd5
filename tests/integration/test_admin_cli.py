"""``cps-admin`` against SQLite and PostgreSQL: master data, dead letters, errors."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine

import ledger_db
from attribution_worker.admin_cli import escape, main, parse_at
from attribution_worker.order_store import IncomingMessage, apply_batch
from ledger_db import master_data
from tests.integration.db import ledger_engine, ledger_url  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000
DAY = 86_400_000
ROOT = Path(__file__).resolve().parents[2]


class Cli:
    def __init__(self, url: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.url, self.capsys = url, capsys

    def __call__(self, *argv: str, status: int = 0) -> str:
        self.capsys.readouterr()
        code = main(["--db", self.url, *argv])
        out, err = self.capsys.readouterr()
        assert code == status, (out, err)
        return out + err

    def json(self, *argv: str) -> Any:
        return orjson.loads(self(*argv, "--json"))


@pytest.fixture
def cli(ledger_url: str, ledger_engine: Engine,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(ledger_url, capsys)


def test_db_upgrade_and_check(cli: Cli) -> None:
    head = ledger_db.head_revision()
    assert f"revision {head} (head {head})" in cli("db", "upgrade")
    assert "schema matches" in cli("db", "check")


def test_shops_join_exit_and_rejoin(cli: Cli, ledger_engine: Engine) -> None:  # noqa: F811
    cli("shop", "add", "s-1", "--name", "Shop One", "--cross-shop-opt-out")
    assert "already exists" in cli("shop", "add", "s-1", status=2)
    assert "joined CPS at 2023-11-14 22:13:20.000Z" in cli("shop", "join", "s-1",
                                                           "--at", str(T0))
    assert "in CPS already" in cli("shop", "join", "s-1", status=2)
    assert "cannot exit before" in cli("shop", "exit", "s-1", "--at", str(T0 - 1), status=2)
    out = cli("shop", "exit", "s-1", "--at", "2023-11-24T22:13:20Z")
    assert "still CPS" in out
    assert "it can join again at that time or later" in cli(
        "shop", "join", "s-1", "--at", str(T0 + DAY), status=2)
    cli("shop", "join", "s-1", "--at", "2023-12-25T08:00:00+08:00")
    assert cli.json("shop", "list") == [{
        "shop_id": "s-1", "name": "Shop One", "cross_shop_opt_out": True,
        "created_at": pytest.approx(T0, abs=10**12),
        "cps_periods": [{"from": T0, "to": T0 + 10 * DAY},
                        {"from": 1_703_462_400_000, "to": None}]}]
    table = cli("shop", "list").splitlines()
    assert table[0].split() == ["shop", "name", "cross-shop", "CPS", "periods"]
    assert "opted out" in table[1]
    with ledger_engine.connect() as conn:
        during_grace = T0 + 10 * DAY + 15 * DAY - 1
        assert master_data.shop_has_cps_attribute(conn, "s-1", during_grace)
        assert not master_data.shop_has_cps_attribute(conn, "s-1", during_grace + 1)
        assert master_data.shop_has_cps_attribute(conn, "s-1", 1_703_462_400_000)
    cli("shop", "add", "s-2")
    assert "is not in CPS" in cli("shop", "exit", "s-2", status=2)
    assert "no shop 's-3'" in cli("shop", "exit", "s-3", status=2)


def test_channels_authorise_and_revoke(cli: Cli, ledger_engine: Engine) -> None:  # noqa: F811
    cli("shop", "add", "s-1")
    cli("channel", "add", "live", "--name", "Live app")
    assert "no channel 'chat'" in cli("channel", "authorise", "chat", "s-1", status=2)
    assert "has not authorised" in cli("channel", "revoke", "live", "s-1", status=2)
    cli("channel", "authorise", "live", "s-1", "--at", str(T0))
    assert "already" in cli("channel", "authorise", "live", "s-1", status=2)
    cli("channel", "revoke", "live", "s-1", "--at", str(T0 + DAY))
    [doc] = cli.json("channel", "list")
    assert doc["authorisations"] == [{"shop_id": "s-1", "from": T0, "to": T0 + DAY}]
    with ledger_engine.connect() as conn:
        assert master_data.channel_authorised(conn, "live", "s-1", T0 + DAY - 1)
        assert not master_data.channel_authorised(conn, "live", "s-1", T0 + DAY)
        assert not master_data.channel_authorised(conn, "live", "s-1", T0 - 1)
    assert "Live app" in cli("channel", "list")


def test_promoters_and_bases(cli: Cli) -> None:
    cli("shop", "add", "s-1")
    cli("promoter", "add", "p-1", "--account", "acct-1", "--self-purchase", "deny",
        "--webhook-url", "https://hooks.example/cps")
    cli("promoter", "add", "p-2")
    assert "http(s) URL" in cli("promoter", "add", "p-3", "--webhook-url", "javascript:x",
                                status=2)
    assert cli.json("promoter", "list") == [
        {"promoter_id": "p-1", "account_id": "acct-1", "self_purchase": "deny",
         "webhook_url": "https://hooks.example/cps", "created_at": pytest.approx(T0, abs=10**12)},
        {"promoter_id": "p-2", "account_id": None, "self_purchase": None, "webhook_url": None,
         "created_at": pytest.approx(T0, abs=10**12)}]
    assert "default" in cli("promoter", "list")
    cli("base", "add", "b-1", "--shop", "s-1", "--name", "VIP")
    cli("base", "add", "b-all")
    assert "no shop 's-9'" in cli("base", "add", "b-2", "--shop", "s-9", status=2)
    cli("base", "member", "add", "b-1", "p-1")
    cli("base", "member", "add", "b-1", "p-2")
    assert "already" in cli("base", "member", "add", "b-1", "p-2", status=2)
    assert "no promoter 'p-9'" in cli("base", "member", "add", "b-1", "p-9", status=2)
    bases = cli.json("base", "list")
    assert [(b["base_id"], b["shop_id"], b["members"]) for b in bases] == [
        ("b-1", "s-1", ["p-1", "p-2"]), ("b-all", None, [])]


def test_dead_letters_list_show_replay(cli: Cli, ledger_engine: Engine) -> None:  # noqa: F811
    order = {"version": 1, "order_id": "o-1", "shop_id": "s-1", "buyer_key": "v",
             "buyer_account": None, "created_at": T0, "status": "created", "event_ts": T0,
             "items": [{"item_id": "i", "product_id": "p", "category_id": "c",
                        "quantity": 1, "paid_amount": 100}]}
    apply_batch(ledger_engine, [
        IncomingMessage(orjson.dumps(order), partition=2, offset=41, key=b"o-1"),
        IncomingMessage(b"\x1b[31mnot json\xff", partition=2, offset=42)])
    assert "no open dead letters" not in cli("deadletters", "list")
    letters = cli.json("deadletters", "list")
    assert [(d["order_id"], d["field"], d["offset"]) for d in letters] == [
        ("o-1", "shop_id", 41), (None, "(message)", 42)]
    first, second = (d["id"] for d in letters)
    shown = cli("deadletters", "show", str(second))
    assert "\\x1b[31mnot json\\xff" in shown
    assert "\x1b" not in shown
    assert "cps.orders.v1[2]@42" in shown
    assert "no dead letter with id 999" in cli("deadletters", "show", "999", status=2)
    assert "not a positive integer" in cli("deadletters", "show", "x", status=2)

    out = cli("deadletters", "replay", str(first), status=1)  # the shop is still unknown
    assert f"{first}: dead_lettered: unknown shop 's-1'" in out
    cli("shop", "add", "s-1")
    out = cli("deadletters", "replay", "--all", status=1)  # the bad JSON stays bad
    assert f"{first}: applied: new order" in out
    assert "replayed 2, 1 still dead-lettered" in out
    assert [d["id"] for d in cli.json("deadletters", "list")] == [second]
    assert len(cli.json("deadletters", "list", "--all")) == 2
    detail = cli.json("deadletters", "show", str(first))
    assert detail["replay_result"] == "applied"
    assert "no dead letter with id 999" in cli("deadletters", "replay", "999", status=2)
    assert "not both" in cli("deadletters", "replay", status=2)


@pytest.mark.parametrize(("argv", "env_url", "message"), [
    (("shop", "add", "bad id!"), None, "must match"),
    (("shop", "join", "s-1", "--at", "tomorrow"), None, "neither an ISO 8601 date/time"),
    (("shop", "frobnicate"), None, "invalid choice"),
    (("promoter", "add", "p", "--self-purchase", "maybe"), None, "invalid choice"),
    (("shop", "list"), "mysql://x/y", "CPS_DATABASE_URL"),
    (("--db", "oracle://x", "shop", "list"), None, "unsupported database"),
])
def test_bad_input_exits_2(argv: tuple[str, ...], env_url: str | None, message: str,
                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CPS_DATABASE_URL", env_url or f"sqlite:///{tmp_path / 'l.db'}")
    assert main(list(argv)) == 2
    assert message in capsys.readouterr().err


def test_no_traceback_from_the_console(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "attribution_worker.admin_cli", *argv],
                              capture_output=True, text=True, env=env, cwd=tmp_path,
                              timeout=60, check=False)

    down = run("--db", "postgresql+psycopg://postgres@127.0.0.1:1/x?connect_timeout=2",
               "shop", "list")
    assert (down.returncode, "Traceback" in down.stderr) == (1, False), down.stderr
    assert "database error" in down.stderr
    empty = run("--db", f"sqlite:///{tmp_path / 'new' / 'l.db'}", "shop", "add", "s-1")
    assert (empty.returncode, "Traceback" in empty.stderr) == (1, False), empty.stderr
    assert "run `cps-admin db upgrade` first" in empty.stderr
    bad = run("shop", "add", "bad id!")
    assert (bad.returncode, "Traceback" in bad.stderr) == (2, False), bad.stderr


def test_parse_at_and_escape() -> None:
    assert parse_at(str(T0)) == T0
    assert parse_at("2023-11-14T22:13:20") == T0
    assert parse_at("2023-11-15T06:13:20.000+08:00") == T0
    with pytest.raises(argparse.ArgumentTypeError, match="seconds given"):
        parse_at("1700000000")
    assert escape(b"ok \\ \n \xff \xe4\xb8\xad") == "ok \\\\ \\n \\xff 中"


def test_replay_leaves_other_consumers_dead_letters_alone(
        cli: Cli, ledger_engine: Engine) -> None:  # noqa: F811
    from contracts.topics import CHARGE_RESULTS_TOPIC
    from ledger_db import schema

    with ledger_engine.begin() as conn:
        conn.execute(schema.dead_letters.insert(), [
            {"source": CHARGE_RESULTS_TOPIC, "raw": b"{}", "reason": "charge_id: missing",
             "received_at": T0},
            {"source": "cps.orders.v1", "raw": b"not json", "reason": "not JSON",
             "received_at": T0}])
    charge, order = (d["id"] for d in cli.json("deadletters", "list"))
    out = cli("deadletters", "replay", "--all", status=1)
    assert f"{order}: dead_lettered" in out
    assert "replayed 1, 1 still dead-lettered" in out
    assert "not order messages" in cli("deadletters", "replay", str(charge), status=2)
    assert f"{charge} ({CHARGE_RESULTS_TOPIC})" in cli("deadletters", "replay", str(charge),
                                                      status=2)
