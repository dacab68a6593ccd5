"""Order sync storage: order messages into the ledger's ``orders``, ``order_items`` and
``order_refunds``, one transaction per batch; unusable messages into ``dead_letters``.

``apply_batch(db, messages)`` takes the raw records a consumer read from
``ORDERS_TOPIC`` and, in one transaction:

1. parses each with ``order_decode.decode_order`` (``OrderMessage.from_json``'s result
   and errors, faster); a schema failure is dead-lettered with the field
   ``OrderSchemaError`` names;
2. checks master data with one SELECT per table: an unknown ``shop_id`` or a non-null
   unknown ``channel_id`` is dead-lettered (fix the master data, then replay);
3. loads the stored state of the batch's orders (one SELECT per table, ``IN`` lists of
   at most ``IN_CHUNK`` ids; on PostgreSQL the order rows are locked ``FOR UPDATE``, so a
   consumer that overlaps during a rebalance waits instead of interleaving);
4. folds the messages, in batch order, through ``order_state.decide``: several messages
   of one order in a batch are applied one after the other; a ``Reject`` is
   dead-lettered with the status machine's reason;
5. writes only what changed, with bulk statements: ``INSERT .. ON CONFLICT DO UPDATE``
   (the dialect's own ``insert``) executed once per table with every row, a DELETE for
   the items an unpaid order dropped, and the dead letters (``ON CONFLICT DO NOTHING``
   on topic + partition + offset, so a redelivered bad message is kept once).

It returns one ``Outcome`` per message, in order: applied (with the order's status
before and after and whether the order is new to the ledger: what the attributor needs
to enqueue new orders), ignored (duplicate or older snapshot) or dead-lettered (reason
and field).  Applying the same batch twice writes nothing the second time.  A database
error raises and rolls the whole batch back; the consumer retries it (nothing was
committed, and a retry is idempotent).

Given a ``Connection`` already in a transaction, ``apply_batch`` writes in it and leaves
the commit to the caller (so the attributor can enqueue in the same transaction); given
an ``Engine`` it commits itself (on SQLite with ``BEGIN IMMEDIATE``: it reads, then writes).

``replay_dead_letters(engine, ids)`` re-runs stored raw bytes through the same path
(after the master data was fixed; an attributed order's status change queues its webhook
event, as in order sync) and records ``replayed_at``, ``replay_result`` and
``replay_reason`` on each dead letter instead of dead-lettering it again.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    RowMapping,
    String,
    Table,
    any_,
    bindparam,
    delete,
    select,
    tuple_,
)
from sqlalchemy.dialects import postgresql, sqlite

from attribution_worker.order_decode import decode_order
from attribution_worker.order_state import (
    Apply,
    Ignore,
    ItemState,
    OrderState,
    RefundState,
    decide,
)
from contracts.orders import OrderMessage, OrderSchemaError, OrderStatus, RefundStatus
from contracts.topics import (
    CHARGE_RESULTS_TOPIC,
    CLICK_FALLBACK_STREAM,
    CLICKS_TOPIC,
    ORDERS_TOPIC,
)
from ledger_db.schema import channels, dead_letters, order_items, order_refunds, orders, shops

# Ids per IN list on SQLite (far below its 32,766 bound variables); PostgreSQL takes them
# as one array parameter, so a batch needs one query per table.
IN_CHUNK = 500
POSTGRES_CHUNK = 10_000
REPLAY_BATCH = 1000
MAX_DEAD_LETTER_ORDER_ID = 1024
# JSON spells a NUL character \u0000; PostgreSQL text cannot hold one (SQLite can), so a
# message carrying one would fail its whole batch on every retry: it is dead-lettered.
_JSON_NUL = b"\\u0000"
_OPAQUE_FIELDS = ("buyer_key", "buyer_account", "fanstype", "attribution_token")


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """One record as the consumer read it."""

    raw: bytes
    topic: str = ORDERS_TOPIC
    partition: int | None = None
    offset: int | None = None
    key: bytes | None = None


class OutcomeKind(StrEnum):
    APPLIED = "applied"
    IGNORED = "ignored"
    DEAD_LETTERED = "dead_lettered"


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: OutcomeKind
    reason: str
    order_id: str | None = None  # None only for a message too broken to name its order
    shop_id: str | None = None
    created_at: int | None = None  # the order's, ms
    status: OrderStatus | None = None  # the ledger's status after this message
    previous_status: OrderStatus | None = None  # before it (None: the order is new)
    created: bool = False  # this message brought the order into the ledger
    field: str | None = None  # dead letters: the offending field

    @property
    def status_changed(self) -> bool:
        return self.kind is OutcomeKind.APPLIED and self.status is not self.previous_status


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    source: str
    partition: int | None
    offset: int | None
    key: bytes | None
    raw: bytes
    reason: str
    field: str | None
    order_id: str | None
    received_at: int
    replayed_at: int | None
    replay_result: str | None
    replay_reason: str | None

    @property
    def open(self) -> bool:
        """Not yet replayed successfully."""
        return self.replay_result in (None, OutcomeKind.DEAD_LETTERED.value)


class DeadLetterNotFound(LookupError):
    def __init__(self, ids: Iterable[int]) -> None:
        self.ids = sorted(ids)
        super().__init__(f"no dead letter with id {', '.join(map(str, self.ids))}")


# Other consumers (the click persister, the charge service) dead-letter into the same
# table; their messages are not orders, so the order replay leaves them alone.
FOREIGN_SOURCES = frozenset({CLICKS_TOPIC, CLICK_FALLBACK_STREAM, CHARGE_RESULTS_TOPIC})


class NotAnOrderMessage(ValueError):
    def __init__(self, letters: Iterable[tuple[int, str]]) -> None:
        self.ids = sorted(letter_id for letter_id, _ in letters)
        described = ", ".join(f"{letter_id} ({source})" for letter_id, source in sorted(letters))
        super().__init__(f"not order messages, cannot be replayed as orders: {described}")


@dataclass(slots=True)
class _Run:
    """What folding one batch produced, before anything is written."""

    outcomes: list[Outcome] = field(default_factory=list)
    stored: dict[str, OrderState] = field(default_factory=dict)  # as loaded
    current: dict[str, OrderState] = field(default_factory=dict)  # after the batch
    dead: list[tuple[IncomingMessage, Outcome]] = field(default_factory=list)


def apply_batch(db: Engine | Connection, messages: Sequence[IncomingMessage], *,
                now_ms: int | None = None) -> list[Outcome]:
    """Apply a batch of order records; one ``Outcome`` per message, in order."""
    now = _now_ms() if now_ms is None else now_ms
    with _transaction(db) as conn:
        run = _fold(conn, messages)
        _write_orders(conn, run, now)
        _insert_dead_letters(conn, run.dead, now)
    return run.outcomes


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@contextmanager
def _transaction(db: Engine | Connection) -> Iterator[Connection]:
    if isinstance(db, Engine):
        with db.connect() as conn:
            conn.execution_options(ledger_begin="IMMEDIATE")
            with conn.begin():
                yield conn
    elif db.in_transaction():
        yield db
    else:
        with db.begin():
            yield db


def _fold(conn: Connection, messages: Sequence[IncomingMessage]) -> _Run:
    run = _Run()
    parsed: list[OrderMessage | Outcome] = [_parse(m) for m in messages]
    good = [p for p in parsed if isinstance(p, OrderMessage)]
    known_shops = _existing(conn, shops.c.shop_id, {m.shop_id for m in good})
    known_channels = _existing(conn, channels.c.channel_id,
                               {m.channel_id for m in good if m.channel_id is not None})
    run.stored = _load_states(conn, {m.order_id for m in good
                                     if m.shop_id in known_shops})
    run.current = dict(run.stored)
    for incoming, item in zip(messages, parsed, strict=True):
        outcome = item if isinstance(item, Outcome) else \
            _decide(run.current, item, known_shops, known_channels)
        run.outcomes.append(outcome)
        if outcome.kind is OutcomeKind.DEAD_LETTERED:
            run.dead.append((incoming, outcome))
    return run


def _parse(message: IncomingMessage) -> OrderMessage | Outcome:
    try:
        parsed = decode_order(message.raw)
    except OrderSchemaError as err:
        return Outcome(OutcomeKind.DEAD_LETTERED, f"schema: {err}",
                       order_id=_order_id_of(message.raw), field=err.field)
    if _JSON_NUL in message.raw:  # cheap pre-check; the fields decide
        for name in _OPAQUE_FIELDS:  # ids follow ID_PATTERN, so only these can hold one
            if "\x00" in (getattr(parsed, name) or ""):
                return Outcome(OutcomeKind.DEAD_LETTERED, f"schema: {name}: contains NUL "
                               "(\\u0000), which PostgreSQL text cannot store",
                               order_id=parsed.order_id, field=name)
    return parsed


def _order_id_of(raw: bytes) -> str | None:
    """The order id of a message that failed the schema, when it has a readable one."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    value = obj.get("order_id") if isinstance(obj, dict) else None
    if not isinstance(value, str) or len(value) > MAX_DEAD_LETTER_ORDER_ID or "\x00" in value:
        return None
    return value


def _decide(current: dict[str, OrderState], message: OrderMessage, known_shops: set[str],
            known_channels: set[str]) -> Outcome:
    order: dict[str, Any] = {"order_id": message.order_id, "shop_id": message.shop_id,
                             "created_at": message.created_at}
    if message.shop_id not in known_shops:
        return Outcome(OutcomeKind.DEAD_LETTERED, f"unknown shop {message.shop_id!r}",
                       field="shop_id", **order)
    if message.channel_id is not None and message.channel_id not in known_channels:
        return Outcome(OutcomeKind.DEAD_LETTERED, f"unknown channel {message.channel_id!r}",
                       field="channel_id", **order)
    stored = current.get(message.order_id)
    decision = decide(stored, message)
    if isinstance(decision, Apply):
        current[message.order_id] = decision.state
        before = None if decision.previous is None else decision.previous.status
        after = decision.state.status
        reason = ("new order" if before is None else f"updated ({after.value})"
                  if before is after else f"{before.value} -> {after.value}")
        return Outcome(OutcomeKind.APPLIED, reason, status=after, previous_status=before,
                       created=decision.created, **order)
    if isinstance(decision, Ignore):
        assert stored is not None  # a first message always applies
        return Outcome(OutcomeKind.IGNORED, decision.reason, status=stored.status,
                       previous_status=stored.status, **order)
    return Outcome(OutcomeKind.DEAD_LETTERED, f"status machine: {decision.reason}",
                   field=decision.field,
                   status=None if stored is None else stored.status, **order)


def _chunks(conn: Connection, values: Iterable[str]) -> Iterator[list[str]]:
    ordered = sorted(values)
    size = POSTGRES_CHUNK if conn.dialect.name == "postgresql" else IN_CHUNK
    for start in range(0, len(ordered), size):
        yield ordered[start:start + size]


def _among(conn: Connection, column: Any, values: list[str]) -> ColumnElement[bool]:
    """``column IN values``; on PostgreSQL ``= ANY(array)``: one bound parameter, so the
    statement's text (and the server's plan) is the same whatever the number of ids."""
    if conn.dialect.name == "postgresql":
        return column == any_(bindparam(None, values, type_=postgresql.ARRAY(String)))  # type: ignore[no-any-return]
    return column.in_(values)  # type: ignore[no-any-return]


def _existing(conn: Connection, column: Any, values: set[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(conn, values):
        found.update(conn.execute(select(column).where(_among(conn, column, chunk))).scalars())
    return found


_ORDER = orders.c
_ORDER_COLUMNS = (_ORDER.order_id, _ORDER.shop_id, _ORDER.buyer_key, _ORDER.buyer_account,
                  _ORDER.created_at, _ORDER.status, _ORDER.event_ts, _ORDER.paid_at,
                  _ORDER.received_at, _ORDER.final_at, _ORDER.channel_id, _ORDER.fanstype,
                  _ORDER.attribution_token)
_ITEM = order_items.c
_ITEM_COLUMNS = (_ITEM.order_id, _ITEM.item_id, _ITEM.product_id, _ITEM.category_id,
                 _ITEM.quantity, _ITEM.paid_amount, _ITEM.refunded_amount,
                 _ITEM.refund_pending_amount)
_REFUND = order_refunds.c
_REFUND_COLUMNS = (_REFUND.order_id, _REFUND.refund_id, _REFUND.item_id, _REFUND.amount,
                   _REFUND.status, _REFUND.requested_at)


def _load_states(conn: Connection, order_ids: set[str]) -> dict[str, OrderState]:
    rows: list[Any] = []
    items: dict[str, list[ItemState]] = {}
    refunds: dict[str, list[RefundState]] = {}
    lock = conn.dialect.name == "postgresql"
    for chunk in _chunks(conn, order_ids):
        query = select(*_ORDER_COLUMNS).where(_among(conn, _ORDER.order_id, chunk)) \
            .order_by(_ORDER.order_id)  # lock order: overlapping consumers never deadlock
        found = conn.execute(query.with_for_update() if lock else query).all()
        if not found:
            continue
        rows.extend(found)
        for row in conn.execute(select(*_ITEM_COLUMNS).where(
                _among(conn, _ITEM.order_id, chunk))).all():  # fetchall, not row by row
            items.setdefault(row[0], []).append(ItemState(*row[1:]))
        for refund in conn.execute(select(*_REFUND_COLUMNS).where(
                _among(conn, _REFUND.order_id, chunk))).all():
            refunds.setdefault(refund[0], []).append(
                RefundState(refund[1], refund[2], refund[3], RefundStatus(refund[4]), refund[5]))
    return {row[0]: _order_state(row, items.get(row[0], []), refunds.get(row[0], []))
            for row in rows}


def _order_state(row: Any, items: list[ItemState], refunds: list[RefundState]) -> OrderState:
    (order_id, shop_id, buyer_key, buyer_account, created_at, status, event_ts, paid_at,
     received_at, final_at, channel_id, fanstype, attribution_token) = row
    # Sorted here, not by ORDER BY: the database's collation need not be code-point order.
    return OrderState(
        order_id=order_id, shop_id=shop_id, buyer_key=buyer_key, buyer_account=buyer_account,
        created_at=created_at, status=OrderStatus(status), event_ts=event_ts,
        items=tuple(sorted(items, key=lambda i: i.item_id)),
        refunds=tuple(sorted(refunds, key=lambda r: r.refund_id)),
        paid_at=paid_at, received_at=received_at, final_at=final_at, channel_id=channel_id,
        fanstype=fanstype, attribution_token=attribution_token)


# -- writing -------------------------------------------------------------------------------

def _write_orders(conn: Connection, run: _Run, now_ms: int) -> None:
    order_rows: list[dict[str, Any]] = []
    item_rows: list[dict[str, Any]] = []
    refund_rows: list[dict[str, Any]] = []
    dropped_items: list[tuple[str, str]] = []
    for order_id, state in run.current.items():
        before = run.stored.get(order_id)
        if state == before:
            continue
        order_rows.append(_order_row(state, now_ms))
        old_items = {} if before is None else {i.item_id: i for i in before.items}
        item_rows.extend(_item_row(order_id, i) for i in state.items
                         if old_items.get(i.item_id) != i)
        dropped_items.extend((order_id, item_id) for item_id in
                             old_items.keys() - {i.item_id for i in state.items})
        old_refunds = {} if before is None else {r.refund_id: r for r in before.refunds}
        # Refunds only merge, never disappear (order_state), so there is nothing to delete.
        refund_rows.extend(_refund_row(order_id, r) for r in state.refunds
                           if old_refunds.get(r.refund_id) != r)
    if dropped_items:  # only an unpaid order's items change, so no refund refers to them
        conn.execute(delete(order_items).where(
            tuple_(order_items.c.order_id, order_items.c.item_id).in_(dropped_items)))
    _upsert(conn, orders, order_rows, ("order_id",))
    _upsert(conn, order_items, item_rows, ("order_id", "item_id"))
    _upsert(conn, order_refunds, refund_rows, ("order_id", "refund_id"))


def _upsert(conn: Connection, table: Table, rows: list[dict[str, Any]],
            keys: tuple[str, ...]) -> None:
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        # One statement and one JSON parameter for the whole batch.  Measured on 1,000
        # orders: executemany sends a Bind/Execute per row, and 14 array parameters cost
        # ~30 ms of client-side dumping; orjson builds this text in ~1 ms.
        conn.exec_driver_sql(_postgres_upsert_sql(table, keys),
                             {"rows": orjson.dumps(rows).decode()})
        return
    statement = sqlite.insert(table)
    statement = statement.on_conflict_do_update(
        index_elements=list(keys),
        set_={c.name: statement.excluded[c.name] for c in table.c if c.name not in keys})
    conn.execute(statement, rows)


@cache
def _postgres_upsert_sql(table: Table, keys: tuple[str, ...]) -> str:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    quote = dialect.identifier_preparer.quote
    names = ", ".join(quote(c.name) for c in table.c)
    record = ", ".join(f"{quote(c.name)} {c.type.compile(dialect=dialect)}" for c in table.c)
    updates = ", ".join(f"{quote(c.name)} = EXCLUDED.{quote(c.name)}" for c in table.c
                        if c.name not in keys)
    # Built from the table's own metadata, never from data: the rows are one bound value.
    return (f"INSERT INTO {quote(table.name)} ({names}) "  # noqa: S608
            f"SELECT {names} FROM json_to_recordset(%(rows)s::json) AS r({record}) "
            f"ON CONFLICT ({', '.join(quote(k) for k in keys)}) DO UPDATE SET {updates}")


def _order_row(state: OrderState, now_ms: int) -> dict[str, Any]:
    return {"order_id": state.order_id, "shop_id": state.shop_id,
            "buyer_key": state.buyer_key, "buyer_account": state.buyer_account,
            "channel_id": state.channel_id, "fanstype": state.fanstype,
            "attribution_token": state.attribution_token, "status": state.status.value,
            "created_at": state.created_at, "paid_at": state.paid_at,
            "received_at": state.received_at, "final_at": state.final_at,
            "event_ts": state.event_ts, "updated_at": now_ms}


def _item_row(order_id: str, item: ItemState) -> dict[str, Any]:
    return {"order_id": order_id, "item_id": item.item_id, "product_id": item.product_id,
            "category_id": item.category_id, "quantity": item.quantity,
            "paid_amount": item.paid_amount, "refunded_amount": item.refunded_amount,
            "refund_pending_amount": item.refund_pending_amount}


def _refund_row(order_id: str, refund: RefundState) -> dict[str, Any]:
    return {"order_id": order_id, "refund_id": refund.refund_id, "item_id": refund.item_id,
            "amount": refund.amount, "status": refund.status.value,
            "requested_at": refund.requested_at}


def _insert_dead_letters(conn: Connection, dead: list[tuple[IncomingMessage, Outcome]],
                         now_ms: int) -> None:
    if not dead:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(dialect.insert(dead_letters).on_conflict_do_nothing(), [
        {"source": message.topic, "kafka_partition": message.partition,
         "kafka_offset": message.offset, "key": message.key, "raw": message.raw,
         "reason": outcome.reason, "field": outcome.field, "order_id": outcome.order_id,
         "received_at": now_ms} for message, outcome in dead])


# -- dead letters --------------------------------------------------------------------------

def list_dead_letters(db: Engine | Connection, *, limit: int = 100,
                      include_replayed: bool = False, after_id: int = 0,
                      orders_only: bool = False) -> list[DeadLetter]:
    """Dead letters by id (oldest first); by default only the open ones (never replayed,
    or replayed and dead-lettered again); ``orders_only``: not those of other consumers."""
    query = select(dead_letters).where(dead_letters.c.id > after_id)
    if orders_only:
        query = query.where(dead_letters.c.source.not_in(sorted(FOREIGN_SOURCES)))
    if not include_replayed:
        query = query.where(dead_letters.c.replay_result.is_(None)
                            | (dead_letters.c.replay_result == OutcomeKind.DEAD_LETTERED.value))
    query = query.order_by(dead_letters.c.id).limit(limit)
    with _reading(db) as conn:
        return [_dead_letter(row) for row in conn.execute(query).mappings()]


def get_dead_letter(db: Engine | Connection, dead_letter_id: int) -> DeadLetter | None:
    with _reading(db) as conn:
        row = conn.execute(select(dead_letters).where(
            dead_letters.c.id == dead_letter_id)).mappings().first()
    return None if row is None else _dead_letter(row)


@dataclass(frozen=True, slots=True)
class ReplayResult:
    dead_letter_id: int
    outcome: Outcome


def replay_dead_letters(engine: Engine, ids: Sequence[int] | None = None, *,
                        now_ms: int | None = None) -> list[ReplayResult]:
    from attribution_worker import pushes  # it reads this module's Outcome
    """Re-run dead letters ``ids`` (``None``: every open one), oldest first, through
    ``apply_batch``'s path; raises ``DeadLetterNotFound`` (before replaying any) for
    unknown ids and ``NotAnOrderMessage`` for other consumers' dead letters (``None``
    skips those).  A replay that fails again updates the dead letter's replay columns."""
    now = _now_ms() if now_ms is None else now_ms
    if ids is not None:
        wanted = sorted(set(ids))
        with engine.connect() as conn:
            found = dict(_existing_sources(conn, wanted))
        if missing := set(wanted) - set(found):
            raise DeadLetterNotFound(missing)
        if foreign := [(i, source) for i, source in found.items() if source in FOREIGN_SOURCES]:
            raise NotAnOrderMessage(foreign)
    results: list[ReplayResult] = []
    after_id = 0
    while True:
        with _transaction(engine) as conn:
            rows = _replay_rows(conn, ids, after_id)
            if not rows:
                return results
            run = _fold(conn, [IncomingMessage(row.raw, row.source, row.partition, row.offset,
                                               row.key) for row in rows])
            _write_orders(conn, run, now)
            _record_replays(conn, rows, run.outcomes, now)
            pushes.emit_status_changes(conn, run.outcomes)  # as order sync does
        results.extend(ReplayResult(row.id, outcome)
                       for row, outcome in zip(rows, run.outcomes, strict=True))
        after_id = rows[-1].id


def _existing_sources(conn: Connection, ids: list[int]) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for start in range(0, len(ids), IN_CHUNK):
        found.extend((row.id, row.source) for row in conn.execute(
            select(dead_letters.c.id, dead_letters.c.source).where(
                dead_letters.c.id.in_(ids[start:start + IN_CHUNK]))))
    return found


def _replay_rows(conn: Connection, ids: Sequence[int] | None, after_id: int
                 ) -> list[DeadLetter]:
    if ids is None:
        return list_dead_letters(conn, limit=REPLAY_BATCH, after_id=after_id, orders_only=True)
    chunk = sorted(i for i in set(ids) if i > after_id)[:REPLAY_BATCH]
    if not chunk:
        return []
    query = select(dead_letters).where(dead_letters.c.id.in_(chunk)).order_by(dead_letters.c.id)
    return [_dead_letter(row) for row in conn.execute(query).mappings()]


def _record_replays(conn: Connection, rows: list[DeadLetter], outcomes: list[Outcome],
                    now_ms: int) -> None:
    conn.execute(
        dead_letters.update().where(dead_letters.c.id == bindparam("dead_letter_id"))
        .values(replayed_at=now_ms, replay_result=bindparam("result"),
                replay_reason=bindparam("why")),
        [{"dead_letter_id": row.id, "result": outcome.kind.value, "why": outcome.reason}
         for row, outcome in zip(rows, outcomes, strict=True)])


@contextmanager
def _reading(db: Engine | Connection) -> Iterator[Connection]:
    if isinstance(db, Engine):
        with db.connect() as conn:
            yield conn
    else:
        yield db


def _dead_letter(row: RowMapping) -> DeadLetter:
    return DeadLetter(
        id=row["id"], source=row["source"], partition=row["kafka_partition"],
        offset=row["kafka_offset"], key=None if row["key"] is None else bytes(row["key"]),
        raw=bytes(row["raw"]), reason=row["reason"], field=row["field"],
        order_id=row["order_id"], received_at=row["received_at"],
        replayed_at=row["replayed_at"], replay_result=row["replay_result"],
        replay_reason=row["replay_reason"])
