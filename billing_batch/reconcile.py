"""Reconciliation: the orders, the commission lines, the ledger and the payouts agree.

``reconcile(conn, phase)`` runs every check below as one aggregate query each (a full
scan of ``ledger_transfers`` and ``commission_lines``, no per-row Python) and returns a
``Report``; ``check`` raises ``ReconciliationFailed`` when a check fails.  A run
reconciles before it writes (a failed pre-check stops it before it settles anything)
and after it has written; ``cps-billing reconcile`` runs the same checks alone and
exits non-zero on a mismatch.

Checks (a line's *share* = pended - voided - clawed back + adjusted):

``lines_vs_ledger``    per line: its commission = its share (pending + settled -
                       reversed = accrued), and lines without commission have no money
``frozen_vs_pending``  per line: frozen - unfrozen = pended - voided (the frozen account
                       holds exactly the open pendings)
``merchant_balances``  per shop: the merchant account's balance = -(its lines' commission)
``resolutions``        every post and void names a pending transfer with the same
                       accounts and amount (resolved at most once: a unique index)
``settled_uncharged``  nothing settled of an order whose charge is not ``charged``
``orders_vs_lines``    a line's paid amount is its item's, never accrued on less than its
                       paid - refunded; after a run, every accrued line of an order in the
                       run's scope that order sync did not touch since the run started was
                       accrued on exactly its paid - refunded (a refund arriving during the
                       run is the next run's work, not a mismatch)
``payouts``            per account: the payouts table = the payout transfers
``payouts_within_settled`` per account: never paid out more than was settled to it
                       (payouts pay positive balances only; clawbacks only subtract)
``accounts``           every account a transfer names is registered
``trial_balance``      debits = credits: the posted balances of all accounts sum to zero
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy
from sqlalchemy import Connection

SAMPLE = 20

_SHARE = ("SUM(CASE t.code WHEN 'commission' THEN t.amount WHEN 'void' THEN -t.amount "
          "WHEN 'clawback' THEN -t.amount WHEN 'adjust' THEN t.amount ELSE 0 END)")
_FROZEN = ("SUM(CASE t.code WHEN 'freeze' THEN t.amount WHEN 'unfreeze' THEN -t.amount "
           "ELSE 0 END)")
_PENDED = ("SUM(CASE t.code WHEN 'commission' THEN t.amount WHEN 'void' THEN -t.amount "
           "ELSE 0 END)")
_PER_LINE = f"""
SELECT l.order_id, l.item_id, l.commission_amount, COALESCE(m.share, 0) AS share,
       COALESCE(m.frozen, 0) AS frozen, COALESCE(m.pended, 0) AS pended
FROM commission_lines l
LEFT JOIN (SELECT t.order_id, t.item_id, {_SHARE} AS share, {_FROZEN} AS frozen,
                  {_PENDED} AS pended
           FROM ledger_transfers t WHERE t.order_id IS NOT NULL
           GROUP BY t.order_id, t.item_id) m
  ON m.order_id = l.order_id AND m.item_id = l.item_id
"""  # noqa: S608 (built from constants)
_QUERIES: dict[str, str] = {
    "lines_vs_ledger": f"""
SELECT order_id, commission_amount - share FROM ({_PER_LINE}) x
WHERE commission_amount <> share
UNION ALL
SELECT t.order_id, -SUM(t.amount) FROM ledger_transfers t
LEFT JOIN commission_lines l ON l.order_id = t.order_id AND l.item_id = t.item_id
WHERE t.order_id IS NOT NULL AND l.order_id IS NULL GROUP BY t.order_id""",  # noqa: S608 (built from constants)
    "frozen_vs_pending": f"""
SELECT order_id, frozen - pended FROM ({_PER_LINE}) x WHERE frozen <> pended""",  # noqa: S608 (built from constants)
    "merchant_balances": """
SELECT l.shop_id, COALESCE(b.balance, 0) + l.total
FROM (SELECT shop_id, SUM(commission_amount) AS total FROM commission_lines
      GROUP BY shop_id) l
LEFT JOIN (SELECT account, SUM(amount) AS balance FROM (
             SELECT credit_account_id AS account, amount FROM ledger_transfers
             WHERE flags IN ('posted', 'post')
             UNION ALL
             SELECT debit_account_id, -amount FROM ledger_transfers
             WHERE flags IN ('posted', 'post')) moves
           WHERE account LIKE 'merchant:%' GROUP BY account) b
  ON b.account = 'merchant:' || l.shop_id
WHERE COALESCE(b.balance, 0) + l.total <> 0""",
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
    "trial_balance": """
SELECT 'every account', SUM(balance) FROM (
  SELECT account, SUM(amount) AS balance FROM (
    SELECT credit_account_id AS account, amount FROM ledger_transfers
    WHERE flags IN ('posted', 'post')
    UNION ALL
    SELECT debit_account_id, -amount FROM ledger_transfers
    WHERE flags IN ('posted', 'post')) moves GROUP BY account) balances
HAVING SUM(balance) <> 0""",
}
_TOTALS = """
SELECT
  (SELECT COALESCE(SUM(commission_amount), 0) FROM commission_lines) AS accrued,
  COALESCE(SUM(CASE code WHEN 'commission' THEN amount WHEN 'void' THEN -amount
                         WHEN 'settle' THEN -amount ELSE 0 END), 0) AS pending,
  COALESCE(SUM(CASE code WHEN 'settle' THEN amount ELSE 0 END), 0) AS settled,
  COALESCE(SUM(CASE code WHEN 'clawback' THEN amount WHEN 'adjust' THEN -amount
                         ELSE 0 END), 0) AS reversed,
  COALESCE(SUM(CASE code WHEN 'payout' THEN amount ELSE 0 END), 0) AS paid_out
FROM ledger_transfers"""


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    count: int
    amount_minor: int          # the sum of the differences
    sample: tuple[str, ...]    # orders (or shops, accounts) it concerns, at most SAMPLE


@dataclass(slots=True)
class Report:
    phase: str
    totals: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    checks: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.findings

    def as_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "ok": self.ok, "checks": list(self.checks),
                "totals": self.totals,
                "findings": [{"check": f.check, "count": f.count,
                              "amount_minor": f.amount_minor, "sample": list(f.sample)}
                             for f in self.findings]}

    def lines(self) -> list[str]:
        totals = self.totals
        out = [f"reconciliation {self.phase}: {'ok' if self.ok else 'MISMATCH'} "
               f"({len(self.checks)} checks); accrued {totals.get('accrued', 0)} = pending "
               f"{totals.get('pending', 0)} + settled {totals.get('settled', 0)} - reversed "
               f"{totals.get('reversed', 0)}; paid out {totals.get('paid_out', 0)}"]
        out += [f"  {f.check}: {f.count} mismatches, {f.amount_minor} minor units, e.g. "
                f"{', '.join(f.sample)}" for f in self.findings]
        return out


class ReconciliationFailed(RuntimeError):
    def __init__(self, report: Report) -> None:
        super().__init__("\n".join(report.lines()))
        self.report = report


def reconcile(conn: Connection, phase: str = "check", *, started_ms: int = 0,
              as_of_ms: int = 0) -> Report:
    """``phase="after"`` with the run's start (wall clock) and as-of adds the check that
    the run left no refund unprocessed (see ``orders_vs_lines``)."""
    report = Report(phase, checks=tuple(_QUERIES))
    params = {"after": phase == "after", "started_ms": started_ms, "as_of_ms": as_of_ms}
    dialect = conn.dialect.name
    for name, query in _QUERIES.items():
        if name == "payouts" and dialect == "sqlite":
            query = _sqlite_full_join(query)
        rows = conn.execute(sqlalchemy.text(query), params).all()
        if rows:
            report.findings.append(Finding(name, len(rows), sum(int(r[1] or 0) for r in rows),
                                           tuple(str(r[0]) for r in rows[:SAMPLE])))
    row = conn.execute(sqlalchemy.text(_TOTALS)).one()
    report.totals = {key: int(value) for key, value in row._mapping.items()}
    totals = report.totals
    if totals["pending"] + totals["settled"] - totals["reversed"] != totals["accrued"]:
        report.findings.append(Finding(
            "totals", 1, totals["accrued"] - totals["pending"] - totals["settled"]
            + totals["reversed"], ("pending + settled - reversed != accrued",)))
    return report


def _sqlite_full_join(query: str) -> str:
    # SQLite >= 3.39 has FULL OUTER JOIN; older ones do not: a LEFT JOIN both ways.
    import sqlite3

    if sqlite3.sqlite_version_info >= (3, 39):
        return query
    raise RuntimeError(f"SQLite {sqlite3.sqlite_version} is too old (3.39 needed)")


def check(conn: Connection, phase: str, *, started_ms: int = 0, as_of_ms: int = 0) -> Report:
    report = reconcile(conn, phase, started_ms=started_ms, as_of_ms=as_of_ms)
    if not report.ok:
        raise ReconciliationFailed(report)
    return report
