"""cps-billing run on a real ledger (SQLite and PostgreSQL): SPEC 9-11 from payment to payout."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from billing_batch.run import RunBusy, RunOptions, run_billing
from ledger_db.locks import DatabaseLock
from tests.integration.billing_world import DAY0, DAY_MS, BillingWorld
from tests.integration.db import ledger_engine, ledger_url  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration


@pytest.fixture
def world(ledger_engine: Engine) -> BillingWorld:  # noqa: F811
    world = BillingWorld(ledger_engine)
    world.standard_rates()
    return world


def test_the_worked_example_from_payment_to_payout(world: BillingWorld) -> None:
    world.paid_order("O1", [("I1", 10_000)])
    accrual = world.run(days=1)
    assert accrual.lines_accrued == 1
    assert accrual.charges_requested == 1
    assert world.line("O1", "I1")["commission_amount"] == 2000
    pending = {t["credit_account_id"]: t["amount"] for t in world.transfers("O1")
               if t["flags"] == "pending"}
    assert pending == {"platform": 200, "channel:C1": 500, "promoter:P1": 1300}
    assert world.reconcile().ok

    world.receive("O1", at_ms=DAY0 + DAY_MS)
    world.charge("O1")
    early = world.run(days=15.5)             # T+14.5 after received: not yet
    assert world.settled() == {}
    assert early.amounts.get("settle", 0) == 0
    settle = world.run(days=16)              # T+15 after received
    assert settle.amounts["settle"] == 2000
    assert world.settled() == {"platform": 200, "channel:C1": 500, "promoter:P1": 1300}
    assert world.payouts() == {"platform": 200, "channel:C1": 500, "promoter:P1": 1300}
    assert world.balances() == {"platform": 0, "channel:C1": 0, "promoter:P1": 0}
    assert world.reconcile().ok


def test_rerunning_adds_nothing(world: BillingWorld) -> None:
    world.paid_order("O1", [("I1", 10_000), ("I2", 333)])
    world.run(days=1)
    world.receive("O1")
    world.charge("O1")
    world.run(days=20)
    before = world.transfers()
    again = world.run(days=20)
    assert again.transfers == 0
    assert again.payouts == 0
    assert world.transfers() == before


def test_channel_fee_above_the_pool_leaves_the_promoter_nothing(world: BillingWorld) -> None:
    with world.engine.begin() as conn:
        from billing_batch import master_data

        master_data.add_fee_setting(conn, kind="channel_fee", bp=2000, channel_id="C2",
                                    valid_from_ms=DAY0 - DAY_MS, now_ms=DAY0 - DAY_MS // 2,
                                    rule_id="F-C2-high")
    world.paid_order("O1", [("I1", 10_000)], channel="C2")
    world.run(days=1)
    pending = {t["credit_account_id"]: t["amount"] for t in world.transfers("O1")
               if t["flags"] == "pending"}
    assert pending == {"platform": 200, "channel:C2": 1800}


def test_partial_refund_before_settlement_unfreezes_and_reallocates(world: BillingWorld) -> None:
    world.paid_order("O1", [("I1", 10_000)])
    world.run(days=1)
    world.refund("O1", "I1", 5_000)
    summary = world.run(days=2)
    assert summary.lines_reallocated == 1
    assert summary.amounts["unfreeze"] == 1000
    assert world.line("O1", "I1")["commission_amount"] == 1000
    world.receive("O1")
    world.charge("O1")
    world.run(days=17)
    assert world.settled() == {"platform": 100, "channel:C1": 250, "promoter:P1": 650}
    assert world.reconcile().ok


def test_refund_after_settlement_is_clawed_back_and_carried(world: BillingWorld) -> None:
    world.paid_order("O1", [("I1", 10_000)])
    world.run(days=1)
    world.receive("O1")
    world.charge("O1")
    world.run(days=17)                                   # settled and paid out
    world.refund("O1", "I1", 10_000)
    summary = world.run(days=18)
    assert summary.amounts["clawback"] == 2000
    assert world.balances() == {"platform": -200, "channel:C1": -500, "promoter:P1": -1300}
    assert summary.negative_balances == 3
    # The next earnings net against the debt before anything is paid out.
    world.paid_order("O2", [("I1", 20_000)], paid_at_ms=DAY0 + 18 * DAY_MS)
    world.run(days=19)
    world.receive("O2", at_ms=DAY0 + 19 * DAY_MS)
    world.charge("O2")
    world.run(days=35)
    assert world.balances() == {"platform": 0, "channel:C1": 0, "promoter:P1": 0}
    assert world.payouts() == {"platform": 200 + 200, "channel:C1": 500 + 500,
                               "promoter:P1": 1300 + 1300}
    assert world.reconcile().ok


def test_promoter_at_t_plus_7_on_one_channel(world: BillingWorld) -> None:
    world.schedule("C1", "promoter", days=7)
    world.paid_order("O1", [("I1", 10_000)], channel="C1")
    world.paid_order("O2", [("I1", 10_000)], channel="C2")
    world.run(days=1)
    for order in ("O1", "O2"):
        world.receive(order)
        world.charge(order)
    world.run(days=8)
    assert world.settled() == {"promoter:P1": 1300}
    world.refund("O1", "I1", 5_000)                      # promoter settled, others pending
    world.run(days=9)
    assert world.settled() == {"promoter:P1": 650}
    world.run(days=16)
    assert world.settled() == {"promoter:P1": 650 + 1300, "platform": 100 + 200,
                               "channel:C1": 250, "channel:C2": 500}
    assert world.reconcile().ok


def test_monthly_channel_settles_final_orders_on_the_first(world: BillingWorld) -> None:
    world.schedule("C1", "*", monthly=True)
    world.paid_order("O1", [("I1", 10_000)])
    world.run(days=1)
    world.receive("O1", at_ms=DAY0 + 2 * DAY_MS, final_at_ms=DAY0 + 10 * DAY_MS)
    world.charge("O1")
    world.run(days=30)                                   # 2026-01-31: not the 1st yet
    assert world.settled() == {}
    world.run(days=31)                                   # 2026-02-01
    assert sum(world.settled().values()) == 2000


def test_failed_charge_never_settles(world: BillingWorld) -> None:
    world.paid_order("O1", [("I1", 10_000)])
    world.run(days=1)
    world.receive("O1")
    world.charge("O1", status="failed")
    summary = world.run(days=30)
    assert world.settled() == {}
    assert summary.held == {"charge": 1}
    assert world.reconcile().ok


def test_refund_in_progress_holds_the_order(world: BillingWorld) -> None:
    world.paid_order("O1", [("I1", 10_000), ("I2", 10_000)])
    world.run(days=1)
    world.receive("O1")
    world.charge("O1")
    world.refund("O1", "I2", 4_000, pending=True)
    summary = world.run(days=20)
    assert world.settled() == {}
    assert summary.held == {"refund in progress": 1}
    world.complete_pending_refund("O1", "I2")
    world.run(days=21)
    assert sum(world.settled().values()) == 2000 + 1200


def test_orders_without_decision_or_commission(world: BillingWorld) -> None:
    world.paid_order("O1", [("I1", 10_000)], attribution="undecided")
    world.paid_order("O2", [("I1", 10_000)], promoter=None)          # decided none
    world.paid_order("O3", [("I1", 10_000)], promoter=None, attribution="self_operated")
    summary = world.run(days=1)
    assert summary.awaiting_attribution == 1
    assert world.line("O2", "I1")["status"] == "no_commission"
    assert world.line("O3", "I1")["commission_amount"] == 300        # channel rate 3 %
    world.decide("O1")
    assert world.run(days=2).lines_accrued == 1
    assert world.reconcile().ok


def test_dry_run_writes_nothing(world: BillingWorld) -> None:
    world.paid_order("O1", [("I1", 10_000)])
    summary = world.run(days=1, dry_run=True)
    assert summary.lines_accrued == 1
    assert world.transfers() == []


def test_a_second_concurrent_run_fails_cleanly(world: BillingWorld) -> None:
    from billing_batch.run import RUN_LOCK_KEY

    holder = DatabaseLock(world.engine, "billing-run", RUN_LOCK_KEY)
    assert holder.try_acquire()
    try:
        with pytest.raises(RunBusy, match="another billing run"):
            run_billing(world.engine, RunOptions(as_of_ms=DAY0))
    finally:
        holder.release()


def test_a_killed_run_of_another_as_of_is_closed_as_failed(world: BillingWorld) -> None:
    import sqlalchemy

    from ledger_db import schema

    runs = schema.billing_runs
    with world.engine.begin() as conn:
        conn.execute(runs.insert().values(run_id="2025-12-31.1", as_of=DAY0 - DAY_MS,
                                          status="running", phase="accrue", started_at=DAY0))
    world.paid_order("O1", [("I1", 10_000)])
    summary = world.run(days=1)
    assert not summary.resumed
    with world.engine.connect() as conn:
        rows = dict(conn.execute(sqlalchemy.select(runs.c.run_id, runs.c.status)).all())
    assert rows == {"2025-12-31.1": "failed", summary.run_id: "finished"}


def test_finished_orders_leave_the_run_until_a_refund_brings_them_back(
        world: BillingWorld) -> None:
    world.schedule("C1", "promoter", days=7)
    world.paid_order("O1", [("I1", 10_000), ("I2", 5_000)])
    world.run(days=1)
    assert {world.line("O1", item)["ledger_state"] for item in ("I1", "I2")} == {"open"}
    world.receive("O1")
    world.charge("O1")
    world.run(days=9)                                  # the promoter at T+7: partly settled
    assert world.line("O1", "I1")["ledger_state"] == "partial"
    world.run(days=17)                                 # everyone else at T+15
    assert world.line("O1", "I1")["ledger_state"] == "settled"
    assert world.run(days=18).orders == 0              # nothing left to look at
    world.refund("O1", "I2", 5_000)
    back = world.run(days=19)
    assert back.orders == 1
    assert back.amounts["clawback"] == 1000
    assert world.line("O1", "I2")["ledger_state"] == "settled"
    assert world.reconcile().ok
