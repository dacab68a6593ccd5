"""The merchant's charge of each order (SPEC section 11): requested, then charged or failed.

One ``billing_charges`` row per order.  At payment ``request_charges`` writes the row
(``pending``, attempt 1, charge id ``"<order_id>:1"``) and its ``ChargeRequest`` into the
outbox in the caller's transaction, so the request reaches ``CHARGE_REQUESTS_TOPIC``
if and only if the row was committed; an order that already has a row is skipped, so
re-running a billing batch requests nothing twice.

Results come back on ``CHARGE_RESULTS_TOPIC``; ``apply_results`` folds them into the
rows through the pure rule ``decide`` (a batch's results one after the other, in order):

* a result for an order without a charge, or for a charge id that is not the order's
  current one (an earlier attempt, a typo), is ignored (``unknown`` / ``superseded``);
* ``charged`` ends a pending charge: final, only charged orders settle;
* ``failed`` with attempts left (``attempts < max_attempts``, 3 by default) starts the
  next attempt: a new charge id ``"<order_id>:<attempt>"``, status ``pending``, the last
  reason kept, and a new request into the outbox in the same transaction;
* ``failed`` on the last attempt ends the charge ``failed``: final, never settled,
  reported by ``cps-billing charges list --failed`` (``retry_failed`` asks once more);
* a second result for a final charge changes nothing (``duplicate``; ``conflict`` when
  it contradicts the first, which is also logged).

So applying a batch twice, or any replay of the topic, changes nothing the second time,
and a charge's status only moves pending -> charged | failed.  Rows are read ``FOR
UPDATE`` on PostgreSQL (in ``order_id`` order, so two consumers cannot deadlock) and, on
SQLite, the caller begins with ``ledger_begin="IMMEDIATE"``.  IN lists hold at most
``IN_CHUNK`` (500) ids.  Amounts are integer minor units; times ms since the epoch.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import orjson
import sqlalchemy
from sqlalchemy import Connection, RowMapping, bindparam
from sqlalchemy.dialects import sqlite

from contracts.charges import ChargeRequest, ChargeResult, ChargeStatus, charge_id_for
from contracts.topics import CHARGE_REQUESTS_TOPIC
from ledger_db import outbox
from ledger_db.schema import billing_charges

log = logging.getLogger("cps.billing.charges")

DEFAULT_MAX_ATTEMPTS = 3
IN_CHUNK = 500


class ChargeState(StrEnum):
    """A charge row's status (``ledger_db.schema.CHARGE_STATUSES``)."""

    PENDING = "pending"  # requested, no final answer yet (also between attempts)
    CHARGED = "charged"  # final: the order may settle
    FAILED = "failed"  # final after the last attempt: never settled, reported


class Effect(StrEnum):
    """What one result did."""

    CHARGED = "charged"
    RETRIED = "retried"
    FAILED = "failed"
    UNKNOWN = "unknown"  # ignored: no charge for that order
    SUPERSEDED = "superseded"  # ignored: not the order's current charge id
    DUPLICATE = "duplicate"  # ignored: the charge is final and the result agrees
    CONFLICT = "conflict"  # ignored: the charge is final and the result contradicts it


IGNORED = frozenset({Effect.UNKNOWN, Effect.SUPERSEDED, Effect.DUPLICATE, Effect.CONFLICT})


class ChargeError(ValueError):
    """An operation the charge's state does not allow; the message is for the operator."""


@dataclass(frozen=True, slots=True)
class Charge:
    """One ``billing_charges`` row."""

    order_id: str
    charge_id: str  # the current attempt's
    shop_id: str
    amount_minor: int
    status: ChargeState
    attempts: int  # attempts requested so far (the current one included)
    reason: str | None  # the last failure's reason
    requested_at_ms: int  # when the current attempt was requested
    updated_at_ms: int

    def request(self) -> ChargeRequest:
        """The request of the current attempt, as it went to the funds system."""
        return ChargeRequest(self.charge_id, self.order_id, self.shop_id, self.amount_minor,
                             self.requested_at_ms, self.attempts)

    def next_attempt(self, now_ms: int) -> Charge:
        """Pending again, as attempt ``attempts + 1`` with its own charge id."""
        attempt = self.attempts + 1
        return replace(self, charge_id=charge_id_for(self.order_id, attempt), attempts=attempt,
                       status=ChargeState.PENDING, requested_at_ms=now_ms,
                       updated_at_ms=now_ms)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class Decision:
    effect: Effect
    charge: Charge | None  # the row after the result; unchanged when ignored
    request: ChargeRequest | None = None  # the next attempt to send (``retried``)


def decide(charge: Charge | None, result: ChargeResult, now_ms: int,
           max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> Decision:
    """What ``result`` does to the order's ``charge`` (None: the order has none)."""
    if charge is None:
        return Decision(Effect.UNKNOWN, None)
    if result.charge_id != charge.charge_id:
        return Decision(Effect.SUPERSEDED, charge)
    if charge.status is not ChargeState.PENDING:
        agrees = charge.status.value == result.status.value
        return Decision(Effect.DUPLICATE if agrees else Effect.CONFLICT, charge)
    if result.status is ChargeStatus.CHARGED:
        return Decision(Effect.CHARGED, replace(charge, status=ChargeState.CHARGED,
                                                reason=None, updated_at_ms=now_ms))
    if charge.attempts < max_attempts:
        retry = replace(charge.next_attempt(now_ms), reason=result.reason)
        return Decision(Effect.RETRIED, retry, retry.request())
    return Decision(Effect.FAILED, replace(charge, status=ChargeState.FAILED,
                                           reason=result.reason, updated_at_ms=now_ms))


@dataclass(slots=True)
class ApplySummary:
    counts: Counter[Effect] = field(default_factory=Counter)
    requests: list[ChargeRequest] = field(default_factory=list)  # retries enqueued

    def __getitem__(self, effect: Effect) -> int:
        return self.counts[effect]

    @property
    def ignored(self) -> int:
        return sum(self.counts[e] for e in IGNORED)


# -- database ------------------------------------------------------------------------------

# request_charges on PostgreSQL: the batch as one JSON array; a row that conflicts (the
# order has a charge) is skipped, and RETURNING names the orders that are new.  The
# status is ChargeState.PENDING.
_PG_REQUEST = (
    "INSERT INTO billing_charges (order_id, charge_id, shop_id, amount, status, attempts, "
    "reason, requested_at, updated_at) "
    "SELECT r.order_id, r.charge_id, r.shop_id, r.amount, 'pending', "
    "r.attempts, NULL, r.requested_at, r.requested_at "
    "FROM json_to_recordset(%(rows)s::json) AS r(order_id text, charge_id text, "
    "shop_id text, amount bigint, attempts integer, requested_at bigint) "
    "ON CONFLICT DO NOTHING RETURNING order_id")


def request_charges(conn: Connection, requests: Sequence[ChargeRequest]) -> int:
    """Insert a pending charge and its outbox request per order without a charge yet, in
    the caller's transaction; return how many were new (the rest are skipped)."""
    first: dict[str, ChargeRequest] = {}
    for request in requests:
        first.setdefault(request.order_id, request)
    if not first:
        return 0
    if conn.dialect.name == "postgresql":
        # One statement with one JSON parameter, whatever the batch's size: an executemany
        # with RETURNING would send (and psycopg parse) ~9 parameters per row.
        new = set(conn.exec_driver_sql(_PG_REQUEST, {"rows": orjson.dumps([
            {"order_id": r.order_id, "charge_id": r.charge_id, "shop_id": r.shop_id,
             "amount": r.amount_minor, "attempts": r.attempt, "requested_at": r.requested_at}
            for r in first.values()]).decode()}).scalars())
    else:
        rows = [{"order_id": r.order_id, "charge_id": r.charge_id, "shop_id": r.shop_id,
                 "amount": r.amount_minor, "status": ChargeState.PENDING.value,
                 "attempts": r.attempt, "reason": None, "requested_at": r.requested_at,
                 "updated_at": r.requested_at} for r in first.values()]
        statement = (sqlite.insert(billing_charges).on_conflict_do_nothing()
                     .returning(billing_charges.c.order_id))
        new = set(conn.execute(statement, rows).scalars())
    _enqueue(conn, [r for r in first.values() if r.order_id in new])
    return len(new)


def charge_statuses(conn: Connection, order_ids: Iterable[str]) -> dict[str, str]:
    """``order_id -> status`` for the given orders that have a charge."""
    return {order_id: charge.status.value
            for order_id, charge in load_charges(conn, order_ids).items()}


def load_charges(conn: Connection, order_ids: Iterable[str], *,
                 for_update: bool = False) -> dict[str, Charge]:
    """The charges of ``order_ids`` (absent: none); ``for_update`` locks them on PostgreSQL."""
    found: dict[str, Charge] = {}
    for chunk in _chunks(sorted(set(order_ids))):
        query = (sqlalchemy.select(billing_charges)
                 .where(billing_charges.c.order_id.in_(chunk))
                 .order_by(billing_charges.c.order_id))
        if for_update:
            query = query.with_for_update()
        for row in conn.execute(query).mappings():
            found[row["order_id"]] = _charge(row)
    return found


def list_charges(conn: Connection, *, status: ChargeState | None = None,
                 limit: int | None = None) -> list[Charge]:
    """Charges by order id, optionally only those in ``status``."""
    query = sqlalchemy.select(billing_charges).order_by(billing_charges.c.order_id)
    if status is not None:
        query = query.where(billing_charges.c.status == status.value)
    if limit is not None:
        query = query.limit(limit)
    return [_charge(row) for row in conn.execute(query).mappings()]


def apply_results(conn: Connection, results: Sequence[ChargeResult], now_ms: int, *,
                  max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> ApplySummary:
    """Fold ``results`` into the charges (``decide``) and write what changed, retries'
    requests included, in the caller's transaction."""
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    before = load_charges(conn, (r.order_id for r in results), for_update=True)
    current: dict[str, Charge] = dict(before)
    summary = ApplySummary()
    for result in results:
        decision = decide(current.get(result.order_id), result, now_ms, max_attempts)
        summary.counts[decision.effect] += 1
        if decision.effect is Effect.CONFLICT:
            log.warning("charge %s of order %s is %s; a %s result for it is ignored",
                        result.charge_id, result.order_id,
                        current[result.order_id].status.value, result.status.value)
        if decision.charge is not None and decision.effect not in IGNORED:
            current[result.order_id] = decision.charge
    changed = [c for order_id, c in current.items() if c != before[order_id]]
    _update(conn, [(before[c.order_id], c) for c in changed])
    # Only the latest attempt of an order is worth sending; earlier ones are superseded.
    summary.requests = [c.request() for c in changed
                        if c.attempts > before[c.order_id].attempts]
    _enqueue(conn, summary.requests)
    return summary


def retry_failed(conn: Connection, order_id: str, now_ms: int) -> ChargeRequest:
    """Ask once more for a charge that ``failed`` (the operator's ``charges retry``)."""
    charge = load_charges(conn, [order_id], for_update=True).get(order_id)
    if charge is None:
        raise ChargeError(f"order {order_id!r} has no charge")
    if charge.status is not ChargeState.FAILED:
        raise ChargeError(f"the charge of order {order_id!r} is {charge.status.value}; "
                          "only a failed charge is retried")
    retry = charge.next_attempt(now_ms)
    _update(conn, [(charge, retry)])
    _enqueue(conn, [retry.request()])
    return retry.request()


def _update(conn: Connection, changes: Sequence[tuple[Charge, Charge]]) -> None:
    if not changes:
        return
    table = billing_charges
    statement = (table.update()
                 .where(table.c.order_id == bindparam("b_order_id"),
                        table.c.charge_id == bindparam("b_charge_id"),
                        table.c.status == bindparam("b_status"))
                 .values(charge_id=bindparam("charge_id"), status=bindparam("status"),
                         attempts=bindparam("attempts"), reason=bindparam("reason"),
                         requested_at=bindparam("requested_at"),
                         updated_at=bindparam("updated_at")))
    conn.execute(statement, [
        {"b_order_id": old.order_id, "b_charge_id": old.charge_id,
         "b_status": old.status.value, "charge_id": new.charge_id,
         "status": new.status.value, "attempts": new.attempts, "reason": new.reason,
         "requested_at": new.requested_at_ms, "updated_at": new.updated_at_ms}
        for old, new in changes])


def _enqueue(conn: Connection, requests: Sequence[ChargeRequest]) -> None:
    outbox.enqueue_many(conn, [(CHARGE_REQUESTS_TOPIC, r.order_id.encode(), r.to_json())
                               for r in requests])


def _charge(row: RowMapping) -> Charge:
    return Charge(order_id=row["order_id"], charge_id=row["charge_id"], shop_id=row["shop_id"],
                  amount_minor=row["amount"], status=ChargeState(row["status"]),
                  attempts=row["attempts"], reason=row["reason"],
                  requested_at_ms=row["requested_at"], updated_at_ms=row["updated_at"])


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), IN_CHUNK):
        yield ids[start:start + IN_CHUNK]
