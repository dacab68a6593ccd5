"""Every reconciliation check fires on a ledger tampered with by SQL, on SQLite and
PostgreSQL, and reports exactly what the checks' first form did.

``billing_batch.reconcile`` derives its checks from three passes over ``ledger_transfers``
(per line, per account and code, the resolutions).  ``REFERENCE`` below is the form the
checks were first written in, one aggregate query per check (most a full scan of their
own): the oracle.  For each tamper the report must name the tampered order (shop,
account) under the expected check, and its findings (checks, counts, amounts, samples) and
totals must equal the oracle's.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import Connection, Engine

from billing_batch.reconcile import CHECKS, SAMPLE, Report
from ledger_db import schema
from tests.integration.billing_world import DAY0, DAY_MS, BillingWorld, now_ms
from tests.integration.db import ledger_engine, ledger_url  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

_PER_LINE = """
SELECT l.order_id, l.item_id, l.commission_amount, COALESCE(m.share, 0) AS share,
       COALESCE(m.frozen, 0) AS frozen, COALESCE(m.pended, 0) AS pended
FROM commission_lines l
LEFT JOIN (SELECT t.order_id, t.item_id,
                  SUM(CASE t.code WHEN 'commission' THEN t.amount WHEN 'void' THEN -t.amount
                      WHEN 'clawback' THEN -t.amount WHEN 'adjust' THEN t.amount
                      ELSE 0 END) AS share,
                  SUM(CASE t.code WHEN 'freeze' THEN t.amount
                      WHEN 'unfreeze' THEN -t.amount ELSE 0 END) AS frozen,
                  SUM(CASE t.code WHEN 'commission' THEN t.amount
                      WHEN 'void' THEN -t.amount ELSE 0 END) AS pended
           FROM ledger_transfers t WHERE t.order_id IS NOT NULL
           GROUP BY t.order_id, t.item_id) m
  ON m.order_id = l.order_id AND m.item_id = l.item_id
"""
_BALANCES = """
SELECT account, SUM(amount) AS balance FROM (
  SELECT credit_account_id AS account, amount FROM ledger_transfers
  WHERE flags IN ('posted', 'post')
  UNION ALL
  SELECT debit_account_id, -amount FROM ledger_transfers
  WHERE flags IN ('posted', 'post')) moves GROUP BY account"""
REFERENCE: dict[str, str] = {
    "lines_vs_ledger": f"""
SELECT order_id, commission_amount - share FROM ({_PER_LINE}) x
WHERE commission_amount <> share
UNION ALL
SELECT t.order_id, -SUM(t.amount) FROM ledger_transfers t
LEFT JOIN commission_lines l ON l.order_id = t.order_id AND l.item_id = t.item_id
WHERE t.order_id IS NOT NULL AND l.order_id IS NULL GROUP BY t.order_id""",  # noqa: S608
    "frozen_vs_pending": f"""
SELECT order_id, frozen - pended FROM ({_PER_LINE}) x WHERE frozen <> pended""",  # noqa: S608
    "merchant_balances": f"""
SELECT l.shop_id, COALESCE(b.balance, 0) + l.total
FROM (SELECT shop_id, SUM(commission_amount) AS total FROM commission_lines
      GROUP BY shop_id) l
LEFT JOIN ({_BALANCES}) b ON b.account = 'merchant:' || l.shop_id
WHERE COALESCE(b.balance, 0) + l.total <> 0""",  # noqa: S608
    "resolutions": """
SELECT r.order_id, r.amount FROM ledger_transfers r
LEFT JOIN ledger_transfers p ON p.transfer_id = r.pending_id
WHERE r.pending_id IS NOT NULL
  AND (p.transfer_id IS NULL OR p.flags <> 'pending' OR p.amount <> r.amount
       OR p.debit_account_id <> r.debit_account_id
       OR p.credit_account_id <> r.credit_account_id)""",
    "settled_uncharged": """
SELECT t.order_id, t.amount FROM ledger_transfers t
LEFT JOIN billing_charges c ON c.order_id = t.order_id
WHERE t.code = 'settle' AND (c.status IS NULL OR c.status <> 'charged')""",
    "orders_vs_lines": """
SELECT l.order_id, l.paid_amount - COALESCE(i.paid_amount, 0) FROM commission_lines l
LEFT JOIN order_items i ON i.order_id = l.order_id AND i.item_id = l.item_id
LEFT JOIN orders o ON o.order_id = l.order_id
WHERE i.order_id IS NULL OR i.paid_amount <> l.paid_amount
   OR l.accrued_paid_amount < i.paid_amount - i.refunded_amount
   OR (:after AND l.status = 'accrued' AND o.updated_at < :started_ms
       AND o.paid_at < :as_of_ms
       AND l.accrued_paid_amount <> i.paid_amount - i.refunded_amount)""",
    "payouts": """
SELECT COALESCE(p.account_id, t.account_id), COALESCE(p.total, 0) - COALESCE(t.total, 0)
FROM (SELECT account_id, SUM(amount) AS total FROM payouts GROUP BY account_id) p
FULL OUTER JOIN (SELECT debit_account_id AS account_id, SUM(amount) AS total
                 FROM ledger_transfers WHERE code = 'payout' GROUP BY debit_account_id) t
  ON t.account_id = p.account_id
WHERE COALESCE(p.total, 0) <> COALESCE(t.total, 0)""",
    "payouts_within_settled": """
SELECT account, SUM(paid) - SUM(earned) FROM (
  SELECT debit_account_id AS account, SUM(amount) AS paid, 0 AS earned
  FROM ledger_transfers WHERE code = 'payout' GROUP BY debit_account_id
  UNION ALL
  SELECT credit_account_id, 0, SUM(amount) FROM ledger_transfers
  WHERE code IN ('settle', 'adjust') GROUP BY credit_account_id) moves
GROUP BY account HAVING SUM(paid) > SUM(earned)""",
    "accounts": """
SELECT m.account, 0 FROM (SELECT debit_account_id AS account FROM ledger_transfers
                          UNION SELECT credit_account_id FROM ledger_transfers) m
LEFT JOIN ledger_accounts a ON a.account_id = m.account WHERE a.account_id IS NULL""",
    "trial_balance": f"""
SELECT 'every account', SUM(balance) FROM ({_BALANCES}) balances
HAVING SUM(balance) <> 0""",  # noqa: S608
}
REFERENCE_TOTALS = """
SELECT
  (SELECT COALESCE(SUM(commission_amount), 0) FROM commission_lines) AS accrued,
  COALESCE(SUM(CASE code WHEN 'commission' THEN amount WHEN 'void' THEN -amount
                         WHEN 'settle' THEN -amount ELSE 0 END), 0) AS pending,
  COALESCE(SUM(CASE code WHEN 'settle' THEN amount ELSE 0 END), 0) AS settled,
  COALESCE(SUM(CASE code WHEN 'clawback' THEN amount WHEN 'adjust' THEN -amount
                         ELSE 0 END), 0) AS reversed,
  COALESCE(SUM(CASE code WHEN 'payout' THEN amount ELSE 0 END), 0) AS paid_out
FROM ledger_transfers"""

Books = tuple[dict[str, int], list[tuple[str, int, int, tuple[str, ...]]]]


def reference(conn: Connection, params: dict[str, Any]) -> Books:
    """(totals, findings) by the oracle; samples sorted (their order is the database's)."""
    findings = []
    for name, query in REFERENCE.items():
        rows = conn.execute(sqlalchemy.text(query), params).all()
        if rows:
            assert len(rows) <= SAMPLE, "a tamper this wide would truncate the sample"
            findings.append((name, len(rows), sum(int(r[1] or 0) for r in rows),
                             tuple(sorted(str(r[0]) for r in rows))))
    totals = {k: int(v) for k, v in conn.execute(sqlalchemy.text(REFERENCE_TOTALS))
              .one()._mapping.items()}
    if totals["pending"] + totals["settled"] - totals["reversed"] != totals["accrued"]:
        findings.append(("totals", 1, totals["accrued"] - totals["pending"]
                         - totals["settled"] + totals["reversed"],
                         ("pending + settled - reversed != accrued",)))
    return totals, findings


def books(report: Report) -> Books:
    return report.totals, [(f.check, f.count, f.amount_minor, tuple(sorted(f.sample)))
                           for f in report.findings]


@pytest.fixture
def world(ledger_engine: Engine) -> BillingWorld:  # noqa: F811
    """O1 (two items) and O2 settled and paid out, O2 refunded before settlement (a void,
    a new pending and an unfreeze), O1's I1 refunded after it (clawbacks); O3 accrued,
    not yet received."""
    world = BillingWorld(ledger_engine)
    world.standard_rates()
    world.paid_order("O1", [("I1", 10_000), ("I2", 5_000)])
    world.paid_order("O2", [("I1", 10_000)])
    world.paid_order("O3", [("I1", 8_000)])
    world.run(days=1)
    world.refund("O2", "I1", 2_000)
    world.run(days=2)
    for order in ("O1", "O2"):
        world.receive(order)
        world.charge(order)
    world.run(days=17)
    world.refund("O1", "I1", 5_000)
    world.run(days=18)
    return world


def _insert_transfer(**values: Any) -> Callable[[Connection], None]:
    def insert(conn: Connection) -> None:
        conn.execute(schema.ledger_transfers.insert().values(
            transfer_id=uuid.uuid4(), pending_id=None, order_id=None, item_id=None, seq=0,
            run_id="tamper", as_of=DAY0, **values))
    return insert


TAMPERS: list[tuple[str, str | Callable[[Connection], None], str, str]] = [
    # (case, SQL or a function of a connection, the check that catches it, a sample key)
    ("a pending commission deleted",
     "DELETE FROM ledger_transfers WHERE order_id = 'O3' AND code = 'commission' "
     "AND credit_account_id = 'promoter:P1'", "lines_vs_ledger", "O3"),
    ("the transfers of a deleted line",
     "DELETE FROM commission_lines WHERE order_id = 'O2'", "lines_vs_ledger", "O2"),
    ("a freeze of no item",
     "UPDATE ledger_transfers SET item_id = NULL WHERE order_id = 'O1' AND item_id = 'I2' "
     "AND code = 'freeze'", "lines_vs_ledger", "O1"),
    ("an unfreeze deleted",
     "DELETE FROM ledger_transfers WHERE order_id = 'O2' AND code = 'unfreeze'",
     "frozen_vs_pending", "O2"),
    ("money moved off a merchant account",
     _insert_transfer(debit_account_id="merchant:S1", credit_account_id="platform",
                      amount=7, flags="posted", code="freeze"), "merchant_balances", "S1"),
    ("a settlement's amount changed",
     "UPDATE ledger_transfers SET amount = amount + 1 WHERE order_id = 'O1' "
     "AND item_id = 'I2' AND code = 'settle' AND credit_account_id = 'promoter:P1'",
     "resolutions", "O1"),
    ("a settlement naming a posted transfer",
     "UPDATE ledger_transfers SET pending_id = (SELECT transfer_id FROM ledger_transfers "
     "WHERE order_id = 'O1' AND item_id = 'I2' AND code = 'freeze') WHERE order_id = 'O1' "
     "AND item_id = 'I2' AND code = 'settle' AND credit_account_id = 'platform'",
     "resolutions", "O1"),
    ("a settled order's charge failed",
     "UPDATE billing_charges SET status = 'failed' WHERE order_id = 'O1'",
     "settled_uncharged", "O1"),
    ("a settlement without its order",
     "UPDATE ledger_transfers SET order_id = NULL WHERE order_id = 'O2' AND code = 'settle' "
     "AND credit_account_id = 'platform'", "settled_uncharged", "None"),
    ("an item's paid amount changed",
     "UPDATE order_items SET paid_amount = paid_amount + 100 WHERE order_id = 'O3'",
     "orders_vs_lines", "O3"),
    ("a payout row changed",
     "UPDATE payouts SET amount = amount + 1 WHERE account_id = 'promoter:P1'",
     "payouts", "promoter:P1"),
    ("a payout transfer deleted",
     "DELETE FROM ledger_transfers WHERE code = 'payout' AND debit_account_id = 'channel:C1'",
     "payouts", "channel:C1"),
    ("the settlements of a paid-out account deleted",
     "DELETE FROM ledger_transfers WHERE code = 'settle' "
     "AND credit_account_id = 'promoter:P1'", "payouts_within_settled", "promoter:P1"),
    ("a pending to an unregistered account",
     "UPDATE ledger_transfers SET credit_account_id = 'promoter:P9' WHERE order_id = 'O3' "
     "AND code = 'commission' AND credit_account_id = 'promoter:P1'", "accounts",
     "promoter:P9"),
    ("a commission of no order",
     _insert_transfer(debit_account_id="frozen:S1", credit_account_id="platform", amount=3,
                      flags="pending", code="commission"),
     "totals", "pending + settled - reversed != accrued"),
]


def _params() -> dict[str, Any]:
    return {"after": True, "started_ms": now_ms() + 1, "as_of_ms": DAY0 + 10_000 * DAY_MS}


def test_the_books_of_the_world_balance(world: BillingWorld) -> None:
    report = world.reconcile()
    assert report.ok, report.lines()
    assert report.checks == CHECKS == tuple(REFERENCE)
    with world.engine.connect() as conn:
        assert books(report) == reference(conn, _params())
    totals = report.totals
    assert totals["settled"] > 0
    assert totals["reversed"] > 0
    assert totals["paid_out"] > 0
    assert totals["pending"] > 0                                   # O3


@pytest.mark.parametrize(("case", "tamper", "check", "key"), TAMPERS,
                         ids=[t[0] for t in TAMPERS])
def test_a_tamper_is_reported_as_the_oracle_reports_it(
        world: BillingWorld, case: str, tamper: str | Callable[[Connection], None],
        check: str, key: str) -> None:
    with world.engine.begin() as conn:
        if isinstance(tamper, str):
            assert conn.execute(sqlalchemy.text(tamper)).rowcount >= 1
        else:
            tamper(conn)
    report = world.reconcile()
    assert not report.ok
    assert any(f.check == check and key in f.sample for f in report.findings), report.lines()
    with world.engine.connect() as conn:
        assert books(report) == reference(conn, _params())


def test_settled_uncharged_counts_each_settlement(world: BillingWorld) -> None:
    with world.engine.begin() as conn:
        conn.execute(sqlalchemy.text(
            "UPDATE billing_charges SET status = 'failed' WHERE order_id = 'O1'"))
        settles = conn.execute(sqlalchemy.text(
            "SELECT COUNT(*), SUM(amount) FROM ledger_transfers "
            "WHERE order_id = 'O1' AND code = 'settle'")).one()
    (finding,) = [f for f in world.reconcile().findings if f.check == "settled_uncharged"]
    assert (finding.count, finding.amount_minor) == (settles[0], int(settles[1]))
    assert finding.sample == ("O1",) * settles[0]


def test_the_checks_leave_the_session_settings_as_they_were(world: BillingWorld) -> None:
    """PostgreSQL: work_mem is raised for the big passes and restored (SQLite: the
    page cache setting, which the checks never touch, stays as it was)."""
    from billing_batch.reconcile import reconcile

    postgres = world.engine.dialect.name == "postgresql"
    setting = "SHOW work_mem" if postgres else "PRAGMA cache_size"
    with world.engine.connect() as conn:
        if postgres:
            conn.exec_driver_sql("SET work_mem = '1MB'")
        before = conn.exec_driver_sql(setting).scalar()
        assert reconcile(conn, "check").ok
        assert conn.exec_driver_sql(setting).scalar() == before
        if postgres:
            assert before == "1MB"
