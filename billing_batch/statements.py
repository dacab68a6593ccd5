"""Per-participant statements for a period, from the ledger alone.

A statement of account A for ``[from, to)`` (transfer times are their run's as-of):

    opening  = A's posted balance before ``from``
    + settled + adjusted - clawed back - paid out   (posted in the period)
    = closing

with what was accrued to A (pended) and voided in the period, and A's open pending at
the end (frozen for A, not yet A's).  ``entries=True`` adds every transfer of A in the
period (order, item, code, amount).  One aggregate query per statement set; entries are
read per account, in time order.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy
from sqlalchemy import Connection

PARTICIPANT_PREFIXES = ("promoter:", "channel:", "group_leader:", "fans:")
_SIGNED = """
SELECT account, code, flags, as_of, amount FROM (
  SELECT credit_account_id AS account, code, flags, as_of, amount FROM ledger_transfers
  UNION ALL
  SELECT debit_account_id, code, flags, as_of, -amount FROM ledger_transfers) moves
WHERE (account = 'platform' OR account LIKE 'promoter:%' OR account LIKE 'channel:%'
       OR account LIKE 'group_leader:%' OR account LIKE 'fans:%')
  AND (CAST(:account AS VARCHAR) IS NULL OR account = CAST(:account AS VARCHAR))"""
# The casts: PostgreSQL cannot type a bare NULL parameter ("could not determine data type").
_SUMMARY = f"""
SELECT account,
  SUM(CASE WHEN as_of < :start AND flags IN ('posted', 'post') THEN amount ELSE 0 END),
  SUM(CASE WHEN as_of >= :start AND as_of < :end AND code = 'commission' THEN amount
      ELSE 0 END),
  SUM(CASE WHEN as_of >= :start AND as_of < :end AND code = 'void' THEN amount ELSE 0 END),
  SUM(CASE WHEN as_of >= :start AND as_of < :end AND code = 'settle' THEN amount ELSE 0 END),
  SUM(CASE WHEN as_of >= :start AND as_of < :end AND code = 'clawback' THEN -amount
      ELSE 0 END),
  SUM(CASE WHEN as_of >= :start AND as_of < :end AND code = 'adjust' THEN amount ELSE 0 END),
  SUM(CASE WHEN as_of >= :start AND as_of < :end AND code = 'payout' THEN -amount ELSE 0 END),
  SUM(CASE WHEN as_of < :end AND code IN ('commission', 'void', 'settle')
      THEN (CASE code WHEN 'commission' THEN amount ELSE -amount END) ELSE 0 END)
FROM ({_SIGNED}) signed GROUP BY account ORDER BY account"""  # noqa: S608 (built from constants)
_ENTRIES = """
SELECT order_id, item_id, code, flags, as_of, run_id,
       CASE WHEN credit_account_id = :account THEN amount ELSE -amount END AS amount
FROM ledger_transfers
WHERE (credit_account_id = :account OR debit_account_id = :account)
  AND as_of >= :start AND as_of < :end
ORDER BY as_of, order_id, item_id, seq"""


@dataclass(slots=True)
class Statement:
    account_id: str
    from_ms: int
    to_ms: int
    opening_minor: int
    accrued_minor: int
    voided_minor: int
    settled_minor: int
    clawed_back_minor: int
    adjusted_minor: int
    paid_out_minor: int
    pending_minor: int
    entries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def closing_minor(self) -> int:
        return (self.opening_minor + self.settled_minor + self.adjusted_minor
                - self.clawed_back_minor - self.paid_out_minor)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["closing_minor"] = self.closing_minor
        if not self.entries:
            del out["entries"]
        return out


def statements(conn: Connection, from_ms: int, to_ms: int, *, account_id: str | None = None,
               entries: bool = False) -> list[Statement]:
    params = {"start": from_ms, "end": to_ms, "account": account_id}
    out = [Statement(row[0], from_ms, to_ms, *_amounts(row[1:]))
           for row in conn.execute(sqlalchemy.text(_SUMMARY), params)]
    if entries:
        for statement in out:
            statement.entries = [dict(row._mapping) for row in conn.execute(
                sqlalchemy.text(_ENTRIES), {**params, "account": statement.account_id})]
    return out


def _amounts(values: Sequence[Any]) -> tuple[int, int, int, int, int, int, int, int]:
    opening, accrued, voided, settled, clawed, adjusted, paid, pending = (
        int(value or 0) for value in values)
    return opening, accrued, voided, settled, clawed, adjusted, paid, pending


SUMMARY_FIELDS = ("account_id", "from_ms", "to_ms", "opening_minor", "accrued_minor",
                  "voided_minor", "settled_minor", "clawed_back_minor", "adjusted_minor",
                  "paid_out_minor", "closing_minor", "pending_minor")
ENTRY_FIELDS = ("account_id", "order_id", "item_id", "code", "flags", "as_of", "run_id",
                "amount")


def to_csv(rows: Iterable[Statement]) -> str:
    """One row per statement; with entries, one row per entry instead."""
    buffer = io.StringIO()
    rows = list(rows)
    with_entries = any(statement.entries for statement in rows)
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(ENTRY_FIELDS if with_entries else SUMMARY_FIELDS)
    for statement in rows:
        if with_entries:
            writer.writerows([statement.account_id, *(entry[name] for name in ENTRY_FIELDS[1:])]
                             for entry in statement.entries)
        else:
            values = statement.as_dict()
            writer.writerow(values[name] for name in SUMMARY_FIELDS)
    return buffer.getvalue()
