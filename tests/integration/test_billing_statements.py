"""Per-participant statements on SQLite and PostgreSQL: library and CLI, CSV and JSON.

The story (SPEC 9 amounts: paid 10000 -> platform 200, channel 500, promoter 1300):

    day 1   O1 (P1) and O3 (P2) accrue; both received and charged
    day 16  O3, half refunded before settlement, is re-allocated (void 1300, pend 650)
            and settles; O1 settles; everything is paid out
    day 18  O1 fully refunded after settlement: clawed back, P1's balance -1300
    day 19  O2 (P1, paid 20000) accrues 2600
    day 35  O2 settles; P1 is paid 2600 - 1300 = 1300

so P1's statement for [Jan 18, Jan 21) opens at 0 and closes at -1300 with 2600 still
pending, and the one for [Jan 21, Feb 10) opens at -1300 and closes at 0; consecutive
periods chain (closing = next opening) and the last closing is the ledger balance.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine

from billing_batch.statements import ENTRY_FIELDS, SUMMARY_FIELDS, Statement, statements, to_csv
from tests.integration.billing_world import DAY0, DAY_MS, BillingWorld
from tests.integration.db import ledger_engine, ledger_url  # noqa: F401 (fixtures)
from tests.integration.test_billing_faults import cps_billing  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration

Cli = Callable[..., tuple[int, str, str]]
P1 = "promoter:P1"


def day(n: int) -> int:
    return DAY0 + n * DAY_MS


def date(n: int) -> str:
    """``2026-01-01`` + n days, as the CLI reads it."""
    return f"2026-{1 + (n >= 31):02d}-{n + 1 - 31 * (n >= 31):02d}"


@pytest.fixture
def world(ledger_engine: Engine) -> BillingWorld:  # noqa: F811
    world = BillingWorld(ledger_engine)
    world.standard_rates()
    world.paid_order("O1", [("I1", 10_000)], promoter="P1")
    world.paid_order("O3", [("I1", 10_000)], promoter="P2")
    world.run(days=1)
    for order in ("O1", "O3"):
        world.receive(order)
        world.charge(order)
    world.refund("O3", "I1", 5_000)
    world.run(days=16)
    world.refund("O1", "I1", 10_000)
    world.run(days=18)
    world.paid_order("O2", [("I1", 20_000)], promoter="P1", paid_at_ms=day(18))
    world.run(days=19)
    world.receive("O2", at_ms=day(19))
    world.charge("O2")
    world.run(days=35)
    assert world.reconcile().ok
    return world


def of(world: BillingWorld, start: int, end: int, account: str | None = None,
       entries: bool = False) -> dict[str, Statement]:
    with world.engine.connect() as conn:
        return {s.account_id: s for s in statements(conn, day(start), day(end),
                                                    account_id=account, entries=entries)}


def amounts(statement: Statement) -> dict[str, int]:
    out = statement.as_dict()
    return {name: out[name] for name in SUMMARY_FIELDS[3:] if out[name]}


def test_opening_and_closing_across_a_clawback_and_a_payout(world: BillingWorld) -> None:
    first, second, third = of(world, 0, 17), of(world, 17, 20), of(world, 20, 40)
    assert amounts(first[P1]) == {"accrued_minor": 1300, "settled_minor": 1300,
                                  "paid_out_minor": 1300}
    assert amounts(second[P1]) == {"accrued_minor": 2600, "clawed_back_minor": 1300,
                                   "closing_minor": -1300, "pending_minor": 2600}
    assert amounts(third[P1]) == {"opening_minor": -1300, "settled_minor": 2600,
                                  "paid_out_minor": 1300}
    # P2: half refunded before settlement: the first pending voided, the new one settled.
    assert amounts(first["promoter:P2"]) == {"accrued_minor": 1300 + 650, "voided_minor": 1300,
                                             "settled_minor": 650, "paid_out_minor": 650}
    assert amounts(of(world, 0, 40)[P1]) == {
        "accrued_minor": 3900, "settled_minor": 3900, "clawed_back_minor": 1300,
        "paid_out_minor": 2600}
    for account in first:
        assert first[account].closing_minor == second[account].opening_minor
        assert second[account].closing_minor == third[account].opening_minor
    assert {account: s.closing_minor for account, s in third.items()} == world.balances()
    assert set(first) == {"platform", "channel:C1", P1, "promoter:P2"}


def test_entries_of_one_account(world: BillingWorld) -> None:
    [statement] = of(world, 17, 20, account=P1, entries=True).values()
    assert [(e["order_id"], e["code"], e["amount"], e["as_of"]) for e in statement.entries] == [
        ("O1", "clawback", -1300, day(18)), ("O2", "commission", 2600, day(19))]
    assert of(world, 17, 20, account="promoter:nobody") == {}


def test_statements_cli_json(world: BillingWorld, cps_billing: Cli) -> None:  # noqa: F811
    code, out, err = cps_billing("statements", "--from", date(17), "--to", date(20),
                                 "--format", "json")
    assert code == 0, err
    listed = {row["account_id"]: row for row in json.loads(out)}
    assert listed[P1] == {**of(world, 17, 20)[P1].as_dict(), "closing_minor": -1300}
    assert (listed[P1]["from_ms"], listed[P1]["to_ms"]) == (day(17), day(20))
    assert "entries" not in listed[P1]
    code, out, err = cps_billing("statements", "--from", date(17), "--to", date(20),
                                 "--account", P1, "--entries", "--format", "json")
    [only] = json.loads(out)
    assert [entry["code"] for entry in only["entries"]] == ["clawback", "commission"]


def test_statements_cli_csv(world: BillingWorld, cps_billing: Cli,  # noqa: F811
                            tmp_path: Path) -> None:
    code, out, err = cps_billing("statements", "--from", date(20), "--to", date(40))
    assert code == 0, err
    assert out == to_csv(of(world, 20, 40).values())
    rows = list(csv.DictReader(io.StringIO(out)))
    assert tuple(rows[0]) == SUMMARY_FIELDS
    by_account = {row["account_id"]: row for row in rows}
    assert (by_account[P1]["opening_minor"], by_account[P1]["closing_minor"]) == ("-1300", "0")
    target = tmp_path / "p1.csv"
    code, out, err = cps_billing("statements", "--from", date(17), "--to", date(20),
                                 "--account", P1, "--entries", "--out", str(target))
    assert (code, out) == (0, "")
    assert "1 statements written" in err
    entries = list(csv.DictReader(io.StringIO(target.read_text())))
    assert tuple(entries[0]) == ENTRY_FIELDS
    assert [(e["account_id"], e["order_id"], e["code"], e["amount"]) for e in entries] == [
        (P1, "O1", "clawback", "-1300"), (P1, "O2", "commission", "2600")]


@pytest.mark.parametrize(("args", "message"), [
    (("--from", "2026-01-20", "--to", "2026-01-18"), "--to must be after --from"),
    (("--from", "2026-01-20", "--to", "2026-01-20"), "--to must be after --from"),
    (("--from", "yesterday", "--to", "2026-01-18"), "--from: 'yesterday' is"),
    (("--from", "2026-01-01", "--to", "2026-02-30"), "--to: '2026-02-30' is"),
])
def test_statements_cli_refuses_bad_periods(world: BillingWorld, cps_billing: Cli,  # noqa: F811
                                            args: tuple[str, ...], message: str) -> None:
    code, out, err = cps_billing("statements", *args)
    assert code == 2
    assert out == ""
    assert message in err
    assert "Traceback" not in err
