"""The billing run's database side: read a batch of orders, write what was planned.

A batch is up to ``batch_size`` orders paid before ``as_of``, in ``order_id`` order after
the run's cursor (keyset pagination: no OFFSET, each batch is an index range).  Reading
it costs six statements whatever its size (orders, items, decisions, charges, lines, the
lines' transfers: ``= ANY(array)`` on PostgreSQL, ``IN`` on SQLite); writing it one
statement per table, in the caller's transaction, with the cursor moved in the same
commit, so a crash leaves either the whole batch or none of it.

Transfers are appended with ``COPY`` on PostgreSQL (the benchmark's dominant write: a
line writes about seven) and one ``executemany`` on SQLite.  Commission lines change
under a version guard (``WHERE version = :old``): a line changed behind the run's back
aborts the batch (``ConcurrentChange``) instead of being overwritten.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy
from sqlalchemy import Connection, and_, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement

from billing_batch.commission import FrozenTerms, Mode
from billing_batch.ledger import Code, Flags, LineLedger, Transfer, account_kind, fold_line
from billing_batch.plan import CommissionLine, DecisionFacts, ItemFacts, OrderFacts
from billing_batch.rates import RateLevel
from ledger_db import schema

TRANSFER_COLUMNS = ("transfer_id", "debit_account_id", "credit_account_id", "amount",
                    "pending_id", "flags", "code", "order_id", "item_id", "seq", "run_id",
                    "as_of")


class ConcurrentChange(RuntimeError):
    """A commission line changed between this run's read and its write."""


@dataclass(frozen=True, slots=True)
class Batch:
    orders: list[OrderFacts]
    lines: dict[str, dict[str, CommissionLine]]   # order_id -> item_id -> line
    ledgers: dict[str, dict[str, LineLedger]]     # order_id -> item_id -> ledger state

    @property
    def last_order_id(self) -> str | None:
        return self.orders[-1].order_id if self.orders else None


def _in(column: Any, ids: Sequence[str], dialect: str) -> ColumnElement[bool]:
    if dialect == "postgresql":
        return column == sqlalchemy.any_(  # type: ignore[no-any-return]
            bindparam(None, list(ids), type_=postgresql.ARRAY(sqlalchemy.String)))
    return column.in_(list(ids))  # type: ignore[no-any-return]


def read_batch(conn: Connection, *, as_of_ms: int, after_order_id: str | None,
               batch_size: int, order_ids: Sequence[str] | None = None) -> Batch:
    """The next ``batch_size`` orders in scope after ``after_order_id``, or exactly the
    orders ``order_ids`` (the refunded ones a run takes up at its end)."""
    orders_t = schema.orders
    query = select(orders_t.c.order_id, orders_t.c.shop_id, orders_t.c.status,
                   orders_t.c.paid_at, orders_t.c.received_at, orders_t.c.final_at)
    if order_ids is not None:
        query = query.where(_in(orders_t.c.order_id, order_ids, conn.dialect.name))
    else:
        query = query.where(*in_scope(as_of_ms))
        if after_order_id is not None:
            query = query.where(orders_t.c.order_id > after_order_id)
    rows = conn.execute(query.order_by(orders_t.c.order_id).limit(batch_size)).all()
    if not rows:
        return Batch([], {}, {})
    ids = [row.order_id for row in rows]
    dialect = conn.dialect.name
    items = _items(conn, ids, dialect)
    decisions = _decisions(conn, ids, dialect)
    charges: dict[str, str] = {
        order_id: status for order_id, status in conn.execute(
            select(schema.billing_charges.c.order_id, schema.billing_charges.c.status)
            .where(_in(schema.billing_charges.c.order_id, ids, dialect)))}
    lines = _lines(conn, ids, dialect)
    ledgers = _ledgers(conn, _needing_ledgers(lines, items), dialect)
    orders = [OrderFacts(row.order_id, row.shop_id, row.status, row.paid_at, row.received_at,
                         row.final_at, tuple(items.get(row.order_id, ())),
                         decisions.get(row.order_id), charges.get(row.order_id))
              for row in rows]
    return Batch(orders, lines, ledgers)


def in_scope(as_of_ms: int) -> tuple[ColumnElement[bool], ...]:
    """The orders a run as of ``as_of_ms`` walks through: paid before it and not done:
    without commission lines yet (new, or awaiting attribution) or with a line still
    holding pending money (``open``/``partial``).  A finished order costs two index probes;
    one refunded after it finished comes back through ``refunded_settled_orders``."""
    orders, lines = schema.orders, schema.commission_lines
    same_order = lines.c.order_id == orders.c.order_id
    has_lines = select(lines.c.order_id).where(same_order).exists()
    pending = select(lines.c.order_id).where(
        same_order, lines.c.ledger_state.in_(("open", "partial"))).exists()
    return (orders.c.paid_at.is_not(None), orders.c.paid_at < as_of_ms,
            sqlalchemy.or_(~has_lines, pending))


def refunded_settled_orders(conn: Connection, as_of_ms: int) -> list[str]:
    """Orders whose lines were all settled (or left without money by an earlier refund)
    and that a refund has reached since: one join of those lines with their items per run
    (not per batch), usually few rows."""
    orders, lines, items = schema.orders, schema.commission_lines, schema.order_items
    query = (select(lines.c.order_id).distinct()
             .join(items, and_(items.c.order_id == lines.c.order_id,
                               items.c.item_id == lines.c.item_id))
             .join(orders, orders.c.order_id == lines.c.order_id)
             .where(lines.c.status == "accrued", lines.c.ledger_state.in_(("settled", "none")),
                    items.c.paid_amount - items.c.refunded_amount < lines.c.accrued_paid_amount,
                    orders.c.paid_at < as_of_ms)
             .order_by(lines.c.order_id))
    return list(conn.execute(query).scalars())


def _needing_ledgers(lines: Mapping[str, Mapping[str, CommissionLine]],
                     items: Mapping[str, Sequence[ItemFacts]]) -> list[str]:
    """Orders with a line whose transfers the plan must read: ``partial`` ones, and
    ``settled`` ones a refund re-allocates (``open`` ones are rebuilt from the line)."""
    out = []
    for order_id, by_item in lines.items():
        refunded = {item.item_id for item in items.get(order_id, ())
                    if order_id in lines and item.item_id in by_item
                    and item.effective_paid < by_item[item.item_id].accrued_paid_amount}
        if any(line.ledger_state == "partial"
               or (line.ledger_state == "settled" and line.item_id in refunded)
               for line in by_item.values()):
            out.append(order_id)
    return out


def _items(conn: Connection, ids: Sequence[str], dialect: str) -> dict[str, list[ItemFacts]]:
    table = schema.order_items
    out: dict[str, list[ItemFacts]] = {}
    for row in conn.execute(
            select(table.c.order_id, table.c.item_id, table.c.product_id, table.c.category_id,
                   table.c.paid_amount, table.c.refunded_amount, table.c.refund_pending_amount)
            .where(_in(table.c.order_id, ids, dialect))
            .order_by(table.c.order_id, table.c.item_id)):
        out.setdefault(row.order_id, []).append(ItemFacts(*row[1:]))
    return out


def _decisions(conn: Connection, ids: Sequence[str], dialect: str) -> dict[str, DecisionFacts]:
    table = schema.attribution_decisions
    return {row.order_id: DecisionFacts(row.attribution_type, row.promoter_id, row.channel_id)
            for row in conn.execute(
                select(table.c.order_id, table.c.attribution_type, table.c.promoter_id,
                       table.c.channel_id).where(_in(table.c.order_id, ids, dialect)))}


_TERM_COLUMNS = ("rule_id", "rate_level", "rate_bp", "leader_id", "leader_rate_bp",
                 "activity_id", "platform_share_bp", "channel_fee_bp", "fans_share_bp",
                 "promoter_id", "channel_id", "platform_share_rule_id", "channel_fee_rule_id",
                 "fans_share_rule_id")


def _lines(conn: Connection, ids: Sequence[str],
           dialect: str) -> dict[str, dict[str, CommissionLine]]:
    table = schema.commission_lines
    out: dict[str, dict[str, CommissionLine]] = {}
    terms = _SHARED_TERMS
    if len(terms) > _SHARED_TERMS_MAX:
        terms.clear()
    for row in _raw(conn, select(*(table.c[name] for name in LINE_COLUMNS))
                    .where(_in(table.c.order_id, ids, dialect))):
        order_id, item_id, shop_id, mode, status, reason = row[:6]
        key = row[6:20]
        frozen = terms.get((mode, key))
        if frozen is None and key[0] is not None and mode in _TERM_MODES:
            frozen = terms[(mode, key)] = _terms(mode, key)
        out.setdefault(order_id, {})[item_id] = CommissionLine(
            order_id, item_id, shop_id, mode, status, reason, frozen, *row[20:])
    return out


# Read in this order: the line's identity, the frozen terms (_TERM_COLUMNS), the amounts.
LINE_COLUMNS = ("order_id", "item_id", "shop_id", "mode", "status", "reason",
                *_TERM_COLUMNS, "paid_amount", "accrued_paid_amount", "commission_amount",
                "version", "paid_at", "ledger_state")
_TERM_MODES = {mode.value: mode for mode in Mode}
# Lines share few distinct terms (rule, fees, promoter, channel): each is built (and
# checked) once, not once per line; FrozenTerms is immutable, so sharing it is safe.
_SHARED_TERMS: dict[tuple[Any, ...], FrozenTerms] = {}
_SHARED_TERMS_MAX = 100_000


def _terms(mode: str, key: Sequence[Any]) -> FrozenTerms:
    (rule_id, level, rate_bp, leader_id, leader_rate_bp, activity_id, platform_bp, channel_bp,
     fans_bp, promoter_id, channel_id, platform_rule, channel_rule, fans_rule) = key
    return FrozenTerms(
        mode=_TERM_MODES[mode], rule_id=rule_id,
        level=RateLevel(level) if level != "channel" else "channel", rate_bp=rate_bp,
        leader_id=leader_id, leader_rate_bp=leader_rate_bp, activity_id=activity_id,
        platform_share_bp=platform_bp or 0, channel_fee_bp=channel_bp or 0,
        fans_share_bp=fans_bp or 0, promoter_id=promoter_id, channel_id=channel_id,
        platform_share_rule_id=platform_rule, channel_fee_rule_id=channel_rule,
        fans_share_rule_id=fans_rule)


def line_from_row(row: Mapping[Any, Any]) -> CommissionLine:
    terms = None
    if row["rule_id"] is not None and row["mode"] in _TERM_MODES:
        terms = _terms(row["mode"], [row[name] for name in _TERM_COLUMNS])
    return CommissionLine(row["order_id"], row["item_id"], row["shop_id"], row["mode"],
                          row["status"], row["reason"], terms, row["paid_amount"],
                          row["accrued_paid_amount"], row["commission_amount"], row["version"],
                          row["paid_at"], row["ledger_state"])


def _raw(conn: Connection, query: Any) -> Iterable[Sequence[Any]]:
    """The rows of ``query`` read as tuples: by position, never by name (the batch reads
    millions of them)."""
    return conn.execute(query)


_FLAGS = {flag.value: flag for flag in Flags}
_CODES = {code.value: code for code in Code}


def _ledgers(conn: Connection, ids: Sequence[str],
             dialect: str) -> dict[str, dict[str, LineLedger]]:
    if not ids:
        return {}
    table = schema.ledger_transfers
    by_line: dict[tuple[str, str], list[Transfer]] = {}
    flags, codes = _FLAGS, _CODES
    for (transfer_id, debit, credit, amount, pending_id, flag, code, order_id, item_id,
         seq) in _raw(conn, select(*(table.c[name] for name in TRANSFER_COLUMNS[:10]))
                      .where(_in(table.c.order_id, ids, dialect))):
        transfer = Transfer(_uuid(transfer_id), debit, credit, amount, flags[flag], codes[code],
                            order_id, item_id, seq,
                            _uuid(pending_id) if pending_id is not None else None)
        line = by_line.get((order_id, item_id))
        if line is None:
            by_line[(order_id, item_id)] = [transfer]
        else:
            line.append(transfer)
    out: dict[str, dict[str, LineLedger]] = {}
    for (order_id, item_id), transfers in by_line.items():
        out.setdefault(order_id, {})[item_id] = fold_line(transfers)
    return out


def _uuid(value: Any) -> uuid.UUID:
    return value if type(value) is uuid.UUID else uuid.UUID(str(value))


def line_row(line: CommissionLine, *, run_id: str, now_ms: int) -> dict[str, Any]:
    terms = line.terms
    row: dict[str, Any] = {
        "order_id": line.order_id, "item_id": line.item_id, "shop_id": line.shop_id,
        "mode": line.mode, "status": line.status, "reason": line.reason,
        "paid_amount": line.paid_amount, "accrued_paid_amount": line.accrued_paid_amount,
        "commission_amount": line.commission_amount, "version": line.version,
        "paid_at": line.paid_at, "ledger_state": line.ledger_state, "accrued_at": now_ms,
        "updated_at": now_ms, "run_id": run_id}
    for name in _TERM_COLUMNS:
        row[name] = None
    if terms is not None:
        row.update(rule_id=terms.rule_id, rate_level=str(terms.level), rate_bp=terms.rate_bp,
                   leader_id=terms.leader_id, leader_rate_bp=terms.leader_rate_bp,
                   activity_id=terms.activity_id, platform_share_bp=terms.platform_share_bp,
                   channel_fee_bp=terms.channel_fee_bp, fans_share_bp=terms.fans_share_bp,
                   promoter_id=terms.promoter_id, channel_id=terms.channel_id,
                   platform_share_rule_id=terms.platform_share_rule_id,
                   channel_fee_rule_id=terms.channel_fee_rule_id,
                   fans_share_rule_id=terms.fans_share_rule_id)
    return row


def insert_lines(conn: Connection, lines: Sequence[CommissionLine], *, run_id: str,
                 now_ms: int) -> None:
    if not lines:
        return
    rows = [line_row(line, run_id=run_id, now_ms=now_ms) for line in lines]
    if conn.dialect.name == "postgresql":
        columns = tuple(rows[0])
        _copy(conn, "commission_lines", columns, (tuple(row.values()) for row in rows))
        return
    conn.execute(schema.commission_lines.insert(), rows)


def update_lines(conn: Connection, changes: Sequence[tuple[CommissionLine, int]], *,
                 run_id: str, now_ms: int) -> None:
    if not changes:
        return
    table = schema.commission_lines
    statement = (table.update()
                 .where(and_(table.c.order_id == bindparam("b_order"),
                             table.c.item_id == bindparam("b_item"),
                             table.c.version == bindparam("b_version")))
                 .values(accrued_paid_amount=bindparam("accrued_paid_amount"),
                         commission_amount=bindparam("commission_amount"),
                         version=bindparam("version"), ledger_state=bindparam("ledger_state"),
                         updated_at=now_ms, run_id=run_id))
    for line, old_version in changes:
        result = conn.execute(statement, {
            "b_order": line.order_id, "b_item": line.item_id, "b_version": old_version,
            "accrued_paid_amount": line.accrued_paid_amount,
            "commission_amount": line.commission_amount, "version": line.version,
            "ledger_state": line.ledger_state})
        if result.rowcount != 1:
            raise ConcurrentChange(f"commission line {line.order_id}/{line.item_id} is no "
                                   f"longer at version {old_version}")


_PG_STATES = (
    "UPDATE commission_lines AS l SET ledger_state = v.state, updated_at = %(now)s, "
    "run_id = %(run)s FROM (SELECT unnest(%(orders)s::varchar[]) AS order_id, "
    "unnest(%(items)s::varchar[]) AS item_id, unnest(%(versions)s::int[]) AS version, "
    "unnest(%(states)s::varchar[]) AS state) AS v "
    "WHERE l.order_id = v.order_id AND l.item_id = v.item_id AND l.version = v.version")


def update_states(conn: Connection, lines: Sequence[CommissionLine], *, run_id: str,
                  now_ms: int) -> None:
    """The new ``ledger_state`` of lines settlement moved: one statement on PostgreSQL
    (arrays), one executemany on SQLite; under the same version guard as update_lines."""
    if not lines:
        return
    if conn.dialect.name == "postgresql":
        result = conn.exec_driver_sql(_PG_STATES, {
            "now": now_ms, "run": run_id, "orders": [line.order_id for line in lines],
            "items": [line.item_id for line in lines],
            "versions": [line.version for line in lines],
            "states": [line.ledger_state for line in lines]})
        changed = result.rowcount
    else:
        table = schema.commission_lines
        result = conn.execute(
            table.update().where(and_(table.c.order_id == bindparam("b_order"),
                                      table.c.item_id == bindparam("b_item"),
                                      table.c.version == bindparam("b_version")))
            .values(ledger_state=bindparam("state"), updated_at=now_ms, run_id=run_id),
            [{"b_order": line.order_id, "b_item": line.item_id, "b_version": line.version,
              "state": line.ledger_state} for line in lines])
        changed = result.rowcount
    if changed != len(lines):
        raise ConcurrentChange(f"{len(lines) - changed} of {len(lines)} commission lines "
                               f"changed behind the run's back")


def insert_transfers(conn: Connection, transfers: Sequence[Transfer], *, run_id: str,
                     as_of_ms: int) -> None:
    if not transfers:
        return
    rows = [(t.transfer_id, t.debit_account_id, t.credit_account_id, t.amount_minor,
             t.pending_id, t.flags.value, t.code.value, t.order_id, t.item_id, t.seq, run_id,
             as_of_ms) for t in transfers]
    if conn.dialect.name == "postgresql":
        _copy(conn, "ledger_transfers", TRANSFER_COLUMNS, rows)
        return
    conn.execute(schema.ledger_transfers.insert(),
                 [dict(zip(TRANSFER_COLUMNS, row, strict=True)) for row in rows])


def _copy(conn: Connection, table: str, columns: Sequence[str],
          rows: Iterable[Sequence[Any]]) -> None:
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def ensure_accounts(conn: Connection, accounts: Iterable[str], *, now_ms: int) -> None:
    rows = [{"account_id": account, "kind": account_kind(account)[0],
             "owner_id": account_kind(account)[1], "created_at": now_ms}
            for account in sorted(set(accounts))]
    if not rows:
        return
    table = schema.ledger_accounts
    if conn.dialect.name == "postgresql":
        conn.execute(postgresql.insert(table).on_conflict_do_nothing(), rows)
    else:
        conn.execute(sqlite.insert(table).on_conflict_do_nothing(), rows)
