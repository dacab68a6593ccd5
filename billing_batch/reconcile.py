"""Reconciliation: the orders, the commission lines, the ledger and the payouts agree.

``reconcile(conn, phase)`` runs every check below and returns a ``Report``; ``check``
raises ``ReconciliationFailed`` when a check fails.  The checks share three passes over
``ledger_transfers`` (no per-row Python): one GROUP BY (order, item) joined once with
``commission_lines`` (``lines_vs_ledger``, ``frozen_vs_pending``,
``settled_uncharged``); one GROUP BY (credit account, debit account, code, flags), a few
thousand rows from which Python derives every account's balance, payouts and settlements
(``merchant_balances``, ``payouts``, ``payouts_within_settled``, ``accounts``,
``trial_balance`` and the totals); and the post and void rows joined with their pendings
(``resolutions``).  ``tests/integration/test_billing_reconcile.py`` holds the checks'
first form, one query per check, as the oracle the report must equal on tampered ledgers.  A run
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
CHECKS = ("lines_vs_ledger", "frozen_vs_pending", "merchant_balances", "resolutions",
          "settled_uncharged", "orders_vs_lines", "payouts", "payouts_within_settled",
          "accounts", "trial_balance")

_SHARE = ("SUM(CASE t.code WHEN 'commission' THEN t.amount WHEN 'void' THEN -t.amount "
          "WHEN 'clawback' THEN -t.amount WHEN 'adjust' THEN t.amount ELSE 0 END)")
_FROZEN = ("SUM(CASE t.code WHEN 'freeze' THEN t.amount WHEN 'unfreeze' THEN -t.amount "
           "ELSE 0 END)")
_PENDED = ("SUM(CASE t.code WHEN 'commission' THEN t.amount WHEN 'void' THEN -t.amount "
           "ELSE 0 END)")
_SETTLES = "SUM(CASE t.code WHEN 'settle' THEN 1 ELSE 0 END)"
_SETTLED = "SUM(CASE t.code WHEN 'settle' THEN t.amount ELSE 0 END)"
# Pass 1, per order line: one GROUP BY (order, item) of every transfer (payouts and any
# other transfer without an order fall into the (NULL, NULL) group), joined once with the
# lines.  Rows: (check, order, amount, count): count is the number of the check's original
# rows the row stands for (settled_uncharged: one per settle transfer).
_PER_LINE = f"""
WITH m AS MATERIALIZED (
  SELECT t.order_id, t.item_id, {_SHARE} AS share, {_FROZEN} AS frozen, {_PENDED} AS pended,
         SUM(t.amount) AS total, {_SETTLES} AS settles, {_SETTLED} AS settled
  FROM ledger_transfers t GROUP BY t.order_id, t.item_id),
x AS MATERIALIZED (
  SELECT l.order_id AS line_order_id, m.order_id, l.commission_amount,
         COALESCE(m.share, 0) AS share, COALESCE(m.frozen, 0) AS frozen,
         COALESCE(m.pended, 0) AS pended, m.total
  FROM m  -- first: SQLite then looks each group's line up by its primary key (the other
           -- way round it scans m for every line)
  FULL OUTER JOIN commission_lines l ON l.order_id = m.order_id AND l.item_id = m.item_id)
SELECT 'lines_vs_ledger', line_order_id, commission_amount - share, 1 FROM x
WHERE line_order_id IS NOT NULL AND commission_amount <> share
UNION ALL
SELECT 'lines_vs_ledger', order_id, -SUM(total), 1 FROM x
WHERE line_order_id IS NULL AND order_id IS NOT NULL GROUP BY order_id
UNION ALL
SELECT 'frozen_vs_pending', line_order_id, frozen - pended, 1 FROM x
WHERE line_order_id IS NOT NULL AND frozen <> pended
UNION ALL
SELECT 'settled_uncharged', m.order_id, m.settled, m.settles FROM m
LEFT JOIN billing_charges c ON c.order_id = m.order_id
WHERE m.settles > 0 AND (c.status IS NULL OR c.status <> 'charged')
"""  # noqa: S608 (built from constants)
# Pass 2, per account: one GROUP BY of every transfer by (credit, debit, code, flags): a
# few thousand rows however long the ledger (the accounts are few), from which Python
# derives each account's posted balance, payouts and settlements and the totals.
_MOVES = """
SELECT credit_account_id, debit_account_id, code, flags, SUM(amount) FROM ledger_transfers
GROUP BY credit_account_id, debit_account_id, code, flags"""
# Pass 3, the resolutions: the post and void rows only, each against its pending through
# the primary key.
_RESOLUTIONS = """
SELECT r.order_id, r.amount FROM ledger_transfers r
LEFT JOIN ledger_transfers p ON p.transfer_id = r.pending_id
WHERE r.pending_id IS NOT NULL
  AND (p.transfer_id IS NULL OR p.flags <> 'pending' OR p.amount <> r.amount
       OR p.debit_account_id <> r.debit_account_id
       OR p.credit_account_id <> r.credit_account_id)"""
_ORDERS_VS_LINES = """
SELECT l.order_id, l.paid_amount - COALESCE(i.paid_amount, 0) FROM commission_lines l
LEFT JOIN order_items i ON i.order_id = l.order_id AND i.item_id = l.item_id
LEFT JOIN orders o ON o.order_id = l.order_id
WHERE i.order_id IS NULL OR i.paid_amount <> l.paid_amount
   OR l.accrued_paid_amount < i.paid_amount - i.refunded_amount
   OR (:after AND l.status = 'accrued' AND o.updated_at < :started_ms
       AND o.paid_at < :as_of_ms
       AND l.accrued_paid_amount <> i.paid_amount - i.refunded_amount)"""
# The per-line pass's hash aggregate: with PostgreSQL's default 4 MB it spilled 100,000
# lines (~350 bytes each) to disk in 21 batches, about half its time; 64 MB (x
# hash_mem_multiplier, 2 by default) holds some 350,000 lines, and spills far fewer
# batches beyond.  The resolutions' hash join of the pendings gains too.  Raised for these
# two passes only, in their transaction, and restored after them.
_WORK_MEM_KB = 65_536
_SHOPS = "SELECT shop_id, SUM(commission_amount) FROM commission_lines GROUP BY shop_id"
_POSTED = frozenset(("posted", "post"))
_TOTALS: dict[str, tuple[tuple[str, int], ...]] = {   # code -> (total, sign)
    "commission": (("pending", 1),), "void": (("pending", -1),),
    "settle": (("pending", -1), ("settled", 1)), "clawback": (("reversed", 1),),
    "adjust": (("reversed", -1),), "payout": (("paid_out", 1),)}
_PAYOUTS = "SELECT account_id, SUM(amount) FROM payouts GROUP BY account_id"
_REGISTERED = "SELECT account_id FROM ledger_accounts"


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
    report = Report(phase, checks=CHECKS)
    params = {"after": phase == "after", "started_ms": started_ms, "as_of_ms": as_of_ms}
    dialect = conn.dialect.name
    if dialect == "sqlite":
        _sqlite_full_join()
    found: dict[str, list[tuple[Any, int, int]]] = {name: [] for name in CHECKS}

    def run(query: str, **bind: Any) -> list[Any]:
        return list(conn.execute(sqlalchemy.text(query), bind).all())

    restore = _raise_work_mem(conn) if dialect == "postgresql" else None
    for name, key, amount, count in run(_PER_LINE):
        found[name].append((key, int(amount or 0), int(count)))
    found["resolutions"] = [(key, int(amount or 0), 1) for key, amount in run(_RESOLUTIONS)]
    if restore is not None:  # (a failed query aborts the transaction, which restores it)
        run("SELECT set_config('work_mem', :value, true)", value=restore)
    found["orders_vs_lines"] = [(key, int(amount or 0), 1)
                                for key, amount in run(_ORDERS_VS_LINES, **params)]

    balance: dict[str, int] = {}
    paid: dict[str, int] = {}      # payouts debited
    earned: dict[str, int] = {}    # settlements and adjustments credited
    totals = dict.fromkeys(("pending", "settled", "reversed", "paid_out"), 0)
    for credit, debit, code, flags, total in run(_MOVES):
        amount = int(total)
        if flags in _POSTED:
            balance[credit] = balance.get(credit, 0) + amount
            balance[debit] = balance.get(debit, 0) - amount
        else:
            balance.setdefault(credit, 0)
            balance.setdefault(debit, 0)
        if code == "payout":
            paid[debit] = paid.get(debit, 0) + amount
        elif code in ("settle", "adjust"):
            earned[credit] = earned.get(credit, 0) + amount
        for key, sign in _TOTALS.get(code, ()):
            totals[key] += sign * amount
    named = set(balance)

    shops = {str(shop): int(total) for shop, total in run(_SHOPS)}
    found["merchant_balances"] = [
        (shop, balance.get(f"merchant:{shop}", 0) + total, 1) for shop, total in shops.items()
        if balance.get(f"merchant:{shop}", 0) + total != 0]
    # payouts: the payouts table against the payout transfers (accounts debited by one).
    recorded = {str(account): int(total) for account, total in run(_PAYOUTS)}
    transferred = {account: total for account, total in paid.items() if total}
    found["payouts"] = [
        (account, recorded.get(account, 0) - transferred.get(account, 0), 1)
        for account in sorted(recorded.keys() | transferred.keys())
        if recorded.get(account, 0) != transferred.get(account, 0)]
    found["payouts_within_settled"] = [
        (account, paid.get(account, 0) - earned.get(account, 0), 1)
        for account in sorted(named) if paid.get(account, 0) > earned.get(account, 0)]
    registered = {str(account) for (account,) in run(_REGISTERED)}
    found["accounts"] = [(account, 0, 1) for account in sorted(named - registered)]
    trial = sum(balance.values())
    found["trial_balance"] = [("every account", trial, 1)] if trial else []

    for name in CHECKS:
        rows = found[name]
        if rows:
            sample = [str(key) for key, _, count in rows[:SAMPLE] for _ in range(count)]
            report.findings.append(Finding(name, sum(count for _, _, count in rows),
                                           sum(amount for _, amount, _ in rows),
                                           tuple(sample[:SAMPLE])))
    report.totals = {"accrued": sum(shops.values()), **totals}
    if totals["pending"] + totals["settled"] - totals["reversed"] != report.totals["accrued"]:
        report.findings.append(Finding(
            "totals", 1, report.totals["accrued"] - totals["pending"] - totals["settled"]
            + totals["reversed"], ("pending + settled - reversed != accrued",)))
    return report


def _raise_work_mem(conn: Connection) -> str | None:
    """Give the per-line and resolution passes (hash tables of every line, of every
    pending) ``_WORK_MEM_KB`` in this transaction if the session has less; the previous
    value, to restore, or None."""
    current, kb = conn.execute(sqlalchemy.text(
        "SELECT current_setting('work_mem'), setting::bigint FROM pg_settings "
        "WHERE name = 'work_mem'")).one()
    if int(kb) >= _WORK_MEM_KB:
        return None
    conn.execute(sqlalchemy.text("SELECT set_config('work_mem', :value, true)"),
                 {"value": f"{_WORK_MEM_KB}kB"})
    return str(current)


def _sqlite_full_join() -> None:
    # SQLite >= 3.39 has FULL OUTER JOIN (and >= 3.35 MATERIALIZED); older ones do not.
    import sqlite3

    if sqlite3.sqlite_version_info < (3, 39):
        raise RuntimeError(f"SQLite {sqlite3.sqlite_version} is too old (3.39 needed)")


def check(conn: Connection, phase: str, *, started_ms: int = 0, as_of_ms: int = 0) -> Report:
    report = reconcile(conn, phase, started_ms=started_ms, as_of_ms=as_of_ms)
    if not report.ok:
        raise ReconciliationFailed(report)
    return report
