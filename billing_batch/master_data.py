"""Billing master data: rate rules, group-leader activities, channel rates, fee settings and
settlement schedules; the writes ``cps-billing rates|channel-rates|fees|activities|schedule``
make and the loaders the batch builds its books from.

Every function takes an open SQLAlchemy ``Connection`` (the caller owns the transaction),
runs the same on SQLite and PostgreSQL, and raises ``MasterDataError`` (the one of
``ledger_db.master_data``) with an operator-readable reason.

**Edits never rewrite history.**  A row of ``rate_rules``, ``channel_rates`` or
``fee_settings`` is one *version*, valid over ``[valid_from, valid_to)`` (ms; NULL = open):

* ``add_*`` inserts a version with a new id: ``rr-000001``, ``cr-000001``, ``fee-000001``
  (prefix + 1 + the table's row count, six digits, so ids sort by creation, which
  ``billing_batch.rates`` uses to break ties), or an id the caller chose.  A new
  version may start in the past: that is how existing rates are first recorded; it
  changes no row that exists.
* ``end_*(id, at_ms)`` sets ``valid_to = at_ms`` only when ``at_ms >= now`` (never into
  the past), ``valid_to`` is NULL or later than ``at_ms``, and ``at_ms >= valid_from``.
  ``at_ms == valid_from`` (possible only for a version that has not started) *cancels*
  it: ``[T, T)`` matches nothing, the loaders skip it, the row stays.
* ``edit_*(id, rate, from_ms)`` = end the version at ``from_ms`` (same rules) and insert
  ``<id>.v2`` (``.v3`` for an edit of ``.v2``...) with the new rate, valid from
  ``from_ms`` until the old version's end, ``supersedes = id``.  So the rate valid at
  any instant before ``now`` never changes, and the chain of versions is in the table.

References are checked against master data (``shops``, ``channels``, ``promoters``,
``promoter_bases``, ``group_leader_activities``): a rule names an existing shop; a
targeted-base rule a base of the same shop or a platform-wide base; a group-leader rule an
activity of the same shop, its leader coming from the activity.  Products and categories
have no master table: they are the merchant's ids as they appear on order items.

Settlement schedules are one row per (channel | '*', participant kind | '*'): ``set``
replaces, ``remove`` deletes; a change applies to whatever is not yet settled at the next
run (settlement moves money once, so there is no history to keep).

**Loaders** (``load_rate_book``, ``load_channel_rate_book``, ``load_fee_book``,
``load_schedule``, ``load_memberships``) read every non-cancelled row once per run: a few
thousand rules, one query each.  ``Memberships`` answers a promoter's bases and the
group-leader activities joined by the payment time, to build ``rates.LineKey``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Row, Table, exists, func, or_, select

from billing_batch.rates import (
    LEVEL_PRIORITY,
    ChannelRate,
    ChannelRateBook,
    FeeBook,
    FeeKind,
    FeeSetting,
    LineKey,
    RateBook,
    RateLevel,
    RateRule,
)
from billing_batch.schedule import (
    ANY,
    DEFAULT_DELAY_DAYS,
    ScheduleMode,
    ScheduleRule,
    SettlementSchedule,
)
from contracts.orders import ID_PATTERN
from ledger_db.master_data import MasterDataError
from ledger_db.schema import (
    NAME_LEN,
    channel_rates,
    channels,
    fee_settings,
    group_leader_activities,
    group_leader_members,
    promoter_base_members,
    promoter_bases,
    promoters,
    rate_rules,
    settlement_schedules,
    shops,
)

__all__ = [
    "Activity", "ChannelRateRow", "FeeSettingRow", "MasterDataError", "Memberships",
    "RateRuleRow", "ScheduleRow", "add_activity", "add_channel_rate", "add_fee_setting",
    "add_rate_rule", "edit_channel_rate", "edit_fee_setting", "edit_rate_rule",
    "end_channel_rate", "end_fee_setting", "end_rate_rule", "join_activity", "list_activities",
    "list_channel_rates", "list_fee_settings", "list_rate_rules", "list_schedules",
    "load_channel_rate_book", "load_fee_book", "load_memberships", "load_rate_book",
    "load_schedule", "remove_schedule", "set_schedule", "version_status",
]

_VERSION_SUFFIX = re.compile(r"(.+)\.v([0-9]+)")
_EMPTY: frozenset[str] = frozenset()


def version_status(valid_from_ms: int, valid_to_ms: int | None, at_ms: int) -> str:
    """``cancelled`` ([T, T)), ``future``, ``active`` or ``ended`` at ``at_ms``."""
    if valid_to_ms is not None and valid_to_ms <= valid_from_ms:
        return "cancelled"
    if at_ms < valid_from_ms:
        return "future"
    return "active" if valid_to_ms is None or at_ms < valid_to_ms else "ended"


# -- rows ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RateRuleRow:
    """A version in ``rate_rules`` (``leader_id`` from its activity)."""

    rule_id: str
    level: RateLevel
    shop_id: str
    rate_bp: int
    valid_from_ms: int
    valid_to_ms: int | None
    created_at_ms: int
    supersedes: str | None = None
    product_id: str | None = None
    promoter_id: str | None = None
    base_id: str | None = None
    activity_id: str | None = None
    leader_id: str | None = None
    leader_rate_bp: int | None = None
    category_id: str | None = None

    def to_rule(self) -> RateRule:
        return RateRule(**{f.name: getattr(self, f.name) for f in fields(RateRule)})


@dataclass(frozen=True, slots=True)
class ChannelRateRow:
    rule_id: str
    channel_id: str
    category_id: str | None
    rate_bp: int
    valid_from_ms: int
    valid_to_ms: int | None
    created_at_ms: int
    supersedes: str | None = None

    def to_rate(self) -> ChannelRate:
        return ChannelRate(self.rule_id, self.channel_id, self.category_id, self.rate_bp,
                           self.valid_from_ms, self.valid_to_ms, self.created_at_ms)


@dataclass(frozen=True, slots=True)
class FeeSettingRow:
    rule_id: str
    kind: FeeKind
    channel_id: str | None
    bp: int
    valid_from_ms: int
    valid_to_ms: int | None
    created_at_ms: int
    supersedes: str | None = None

    def to_setting(self) -> FeeSetting:
        return FeeSetting(self.rule_id, self.kind, self.channel_id, self.bp, self.valid_from_ms,
                          self.valid_to_ms, self.created_at_ms)


@dataclass(frozen=True, slots=True)
class Activity:
    activity_id: str
    shop_id: str
    leader_id: str
    name: str
    created_at_ms: int
    members: tuple[tuple[str, int], ...]  # (promoter_id, joined_at_ms), by promoter


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    rule: ScheduleRule
    updated_at_ms: int


# -- versioned tables ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Versioned:
    table: Table
    noun: str  # "rate rule"
    prefix: str  # "rr-"


_RATES = _Versioned(rate_rules, "rate rule", "rr-")
_CHANNEL_RATES = _Versioned(channel_rates, "channel rate", "cr-")
_FEES = _Versioned(fee_settings, "fee setting", "fee-")
_COLUMN_OF = {"valid_from_ms": "valid_from", "valid_to_ms": "valid_to",
              "created_at_ms": "created_at"}
_FIELD_OF = {column: name for name, column in _COLUMN_OF.items()}


def _columns(values: Mapping[str, Any]) -> dict[str, Any]:
    """Model field names (``valid_from_ms``) -> table columns (``valid_from``)."""
    return {_COLUMN_OF.get(name, name): value for name, value in values.items()}


def _model_fields(row: Row[Any] | Mapping[str, Any]) -> dict[str, Any]:
    mapping = row._mapping if isinstance(row, Row) else row
    return {_FIELD_OF.get(column, column): value for column, value in mapping.items()}


def _fetch(conn: Connection, kind: _Versioned, rule_id: str) -> Row[Any]:
    row = conn.execute(select(kind.table).where(kind.table.c.rule_id == rule_id)).first()
    if row is None:
        raise MasterDataError(f"no {kind.noun} {rule_id!r}")
    return row


def _taken(conn: Connection, kind: _Versioned, rule_id: str) -> bool:
    return bool(conn.execute(select(exists().where(kind.table.c.rule_id == rule_id))).scalar())


def _new_id(conn: Connection, kind: _Versioned, rule_id: str | None) -> str:
    if rule_id is not None:
        _check_id(kind.noun, rule_id)
        if _taken(conn, kind, rule_id):
            raise MasterDataError(f"{kind.noun} {rule_id!r} already exists")
        return rule_id
    number = int(conn.execute(select(func.count()).select_from(kind.table)).scalar_one()) + 1
    while _taken(conn, kind, f"{kind.prefix}{number:06d}"):
        number += 1
    return f"{kind.prefix}{number:06d}"


def _next_version_id(conn: Connection, kind: _Versioned, rule_id: str) -> str:
    match = _VERSION_SUFFIX.fullmatch(rule_id)
    root, number = (match.group(1), int(match.group(2))) if match else (rule_id, 1)
    number += 1
    while _taken(conn, kind, f"{root}.v{number}"):
        number += 1
    new_id = f"{root}.v{number}"
    _check_id(kind.noun, new_id)
    return new_id


def _check_end(kind: _Versioned, row: Row[Any], at_ms: int, now_ms: int) -> None:
    name = f"{kind.noun} {row.rule_id}"
    if at_ms < now_ms:
        raise MasterDataError(f"{name}: {_when(at_ms)} is in the past (now {_when(now_ms)}); "
                              "a version can only be ended from now on")
    if row.valid_to is not None and row.valid_to <= at_ms:
        raise MasterDataError(f"{name} already ends at {_when(row.valid_to)}, not later than "
                              f"{_when(at_ms)}")
    if at_ms < row.valid_from:
        raise MasterDataError(f"{name} starts at {_when(row.valid_from)}: end it at that time "
                              "(cancelling it) or later")


def _end(conn: Connection, kind: _Versioned, rule_id: str, at_ms: int, now_ms: int) -> Row[Any]:
    row = _fetch(conn, kind, rule_id)
    _check_end(kind, row, at_ms, now_ms)
    column = kind.table.c
    done = conn.execute(kind.table.update()
                        .where(column.rule_id == rule_id,
                               or_(column.valid_to.is_(None), column.valid_to > at_ms))
                        .values(valid_to=at_ms))
    if done.rowcount != 1:
        raise MasterDataError(f"{kind.noun} {rule_id} was ended meanwhile; list it and retry")
    return row


def _edit(conn: Connection, kind: _Versioned, rule_id: str, changes: Mapping[str, Any],
          from_ms: int, now_ms: int, check: Callable[[dict[str, Any]], object]) -> str:
    """End ``rule_id`` at ``from_ms`` and insert its successor with ``changes``."""
    old = _fetch(conn, kind, rule_id)
    _check_end(kind, old, from_ms, now_ms)
    new_id = _next_version_id(conn, kind, rule_id)
    values = {**old._mapping, **changes, "rule_id": new_id, "valid_from": from_ms,
              "valid_to": old.valid_to, "created_at": now_ms, "supersedes": rule_id}
    _validated(check, _model_fields(values))
    _end(conn, kind, rule_id, from_ms, now_ms)
    conn.execute(kind.table.insert().values(**values))
    return new_id


def _validated(check: Callable[[dict[str, Any]], object], values: dict[str, Any]) -> None:
    model = {name: value for name, value in values.items() if name != "supersedes"}
    try:
        check(model)
    except ValueError as err:
        raise MasterDataError(str(err)) from None


def _check_period(valid_from_ms: int, valid_to_ms: int | None) -> None:
    if valid_to_ms is not None and valid_to_ms <= valid_from_ms:
        raise MasterDataError(f"the validity ends ({_when(valid_to_ms)}) at or before it "
                              f"starts ({_when(valid_from_ms)})")


def _listed(conn: Connection, kind: _Versioned, at_ms: int | None, *conditions: Any
            ) -> list[Row[Any]]:
    column = kind.table.c
    query = select(kind.table).where(*conditions)
    if at_ms is not None:
        query = query.where(column.valid_from <= at_ms,
                            or_(column.valid_to.is_(None), column.valid_to > at_ms))
    return list(conn.execute(query.order_by(column.rule_id)))


def _live(kind: _Versioned) -> Any:
    """Rows that are not cancelled (``[T, T)``)."""
    column = kind.table.c
    return or_(column.valid_to.is_(None), column.valid_to > column.valid_from)


# -- rate rules ----------------------------------------------------------------------------

def _leader_of(conn: Connection, activity_id: str | None, shop_id: str) -> str | None:
    if activity_id is None:
        return None
    activity = conn.execute(select(group_leader_activities).where(
        group_leader_activities.c.activity_id == activity_id)).first()
    if activity is None:
        raise MasterDataError(f"no group-leader activity {activity_id!r}")
    if activity.shop_id != shop_id:
        raise MasterDataError(f"activity {activity_id!r} belongs to shop {activity.shop_id!r}, "
                              f"not {shop_id!r}")
    return str(activity.leader_id)


def _check_rate_references(conn: Connection, values: Mapping[str, Any]) -> str | None:
    """Checks what the rule names; returns the leader of its activity (group leader)."""
    shop_id = values["shop_id"]
    _require(conn, shops, "shop_id", shop_id, "shop")
    if values.get("promoter_id") is not None:
        _require(conn, promoters, "promoter_id", values["promoter_id"], "promoter")
    if values.get("base_id") is not None:
        base = conn.execute(select(promoter_bases).where(
            promoter_bases.c.base_id == values["base_id"])).first()
        if base is None:
            raise MasterDataError(f"no promoter base {values['base_id']!r}")
        if base.shop_id not in (None, shop_id):
            raise MasterDataError(f"base {base.base_id!r} belongs to shop {base.shop_id!r}, "
                                  f"not {shop_id!r}")
    return _leader_of(conn, values.get("activity_id"), shop_id)


def _rate_check(conn: Connection) -> Callable[[dict[str, Any]], object]:
    def check(model: dict[str, Any]) -> RateRule:
        leader_id = _check_rate_references(conn, model)
        return RateRule(**model, leader_id=leader_id)
    return check


def add_rate_rule(conn: Connection, *, level: RateLevel | str, shop_id: str, rate_bp: int,
                  valid_from_ms: int, now_ms: int, valid_to_ms: int | None = None,
                  product_id: str | None = None, promoter_id: str | None = None,
                  base_id: str | None = None, activity_id: str | None = None,
                  category_id: str | None = None, leader_rate_bp: int | None = None,
                  rule_id: str | None = None) -> RateRuleRow:
    """Insert a rate rule at ``level``; the fields it needs depend on the level (rates.py)."""
    _check_period(valid_from_ms, valid_to_ms)
    new_id = _new_id(conn, _RATES, rule_id)
    model: dict[str, Any] = dict(
        rule_id=new_id, level=level, shop_id=shop_id, rate_bp=rate_bp,
        valid_from_ms=valid_from_ms, valid_to_ms=valid_to_ms, created_at_ms=now_ms,
        product_id=product_id, promoter_id=promoter_id, base_id=base_id,
        activity_id=activity_id, category_id=category_id, leader_rate_bp=leader_rate_bp)
    try:
        rule = RateRule(**model, leader_id=_check_rate_references(conn, model)
                        if level in set(RateLevel) else None)
    except ValueError as err:
        raise MasterDataError(str(err)) from None
    model["level"] = rule.level.value
    conn.execute(rate_rules.insert().values(**_columns(model)))
    return RateRuleRow(**_model_fields(model), leader_id=rule.leader_id)


def end_rate_rule(conn: Connection, rule_id: str, at_ms: int, *, now_ms: int) -> None:
    _end(conn, _RATES, rule_id, at_ms, now_ms)


def edit_rate_rule(conn: Connection, rule_id: str, from_ms: int, *, now_ms: int,
                   rate_bp: int | None = None, leader_rate_bp: int | None = None) -> str:
    """A new version of ``rule_id`` from ``from_ms`` with the new rate(s); returns its id."""
    changes = {name: value for name, value in (("rate_bp", rate_bp),
                                               ("leader_rate_bp", leader_rate_bp))
               if value is not None}
    if not changes:
        raise MasterDataError("give a new rate or leader rate")
    return _edit(conn, _RATES, rule_id, changes, from_ms, now_ms, _rate_check(conn))


def list_rate_rules(conn: Connection, *, shop_id: str | None = None,
                    at_ms: int | None = None) -> list[RateRuleRow]:
    """Every version (or those valid at ``at_ms``), by shop, level priority, start, id."""
    conditions = [] if shop_id is None else [rate_rules.c.shop_id == shop_id]
    leaders = _leaders(conn)
    rows = [_rate_row(row, leaders) for row in _listed(conn, _RATES, at_ms, *conditions)]
    priority = {level: n for n, level in enumerate(LEVEL_PRIORITY)}
    rows.sort(key=lambda r: (r.shop_id, priority[r.level], r.valid_from_ms, r.rule_id))
    return rows


def _leaders(conn: Connection) -> dict[str, str]:
    activity = group_leader_activities.c
    return {row.activity_id: row.leader_id
            for row in conn.execute(select(activity.activity_id, activity.leader_id))}


def _rate_row(row: Row[Any], leaders: Mapping[str, str]) -> RateRuleRow:
    values = _model_fields(row)
    values["level"] = RateLevel(values["level"])
    activity_id = values.get("activity_id")
    leader_id = None if activity_id is None else leaders.get(activity_id)
    return RateRuleRow(**values, leader_id=leader_id)


def load_rate_book(conn: Connection) -> RateBook:
    """Every rate rule that is not cancelled, for ``RateBook.lookup``."""
    leaders = _leaders(conn)
    return RateBook(_rate_row(row, leaders).to_rule()
                    for row in conn.execute(select(rate_rules).where(_live(_RATES))))


# -- channel rates -------------------------------------------------------------------------

def _channel_check(conn: Connection) -> Callable[[dict[str, Any]], object]:
    def check(model: dict[str, Any]) -> ChannelRate:
        _require(conn, channels, "channel_id", model["channel_id"], "channel")
        return ChannelRate(**model)
    return check


def add_channel_rate(conn: Connection, *, channel_id: str, rate_bp: int, valid_from_ms: int,
                     now_ms: int, category_id: str | None = None,
                     valid_to_ms: int | None = None,
                     rule_id: str | None = None) -> ChannelRateRow:
    """A self-operated rate of ``channel_id``: for ``category_id``, or channel-wide (None)."""
    _check_period(valid_from_ms, valid_to_ms)
    model: dict[str, Any] = dict(
        rule_id=_new_id(conn, _CHANNEL_RATES, rule_id), channel_id=channel_id,
        category_id=category_id, rate_bp=rate_bp, valid_from_ms=valid_from_ms,
        valid_to_ms=valid_to_ms, created_at_ms=now_ms)
    _validated(_channel_check(conn), model)
    conn.execute(channel_rates.insert().values(**_columns(model)))
    return ChannelRateRow(**model)


def end_channel_rate(conn: Connection, rule_id: str, at_ms: int, *, now_ms: int) -> None:
    _end(conn, _CHANNEL_RATES, rule_id, at_ms, now_ms)


def edit_channel_rate(conn: Connection, rule_id: str, from_ms: int, *, now_ms: int,
                      rate_bp: int) -> str:
    return _edit(conn, _CHANNEL_RATES, rule_id, {"rate_bp": rate_bp}, from_ms, now_ms,
                 _channel_check(conn))


def list_channel_rates(conn: Connection, *, channel_id: str | None = None,
                       at_ms: int | None = None) -> list[ChannelRateRow]:
    conditions = [] if channel_id is None else [channel_rates.c.channel_id == channel_id]
    rows = [ChannelRateRow(**_model_fields(row))
            for row in _listed(conn, _CHANNEL_RATES, at_ms, *conditions)]
    rows.sort(key=lambda r: (r.channel_id, r.category_id or "", r.valid_from_ms, r.rule_id))
    return rows


def load_channel_rate_book(conn: Connection) -> ChannelRateBook:
    return ChannelRateBook(ChannelRateRow(**_model_fields(row)).to_rate() for row in
                           conn.execute(select(channel_rates).where(_live(_CHANNEL_RATES))))


# -- fee settings --------------------------------------------------------------------------

def _fee_check(conn: Connection) -> Callable[[dict[str, Any]], object]:
    def check(model: dict[str, Any]) -> FeeSetting:
        setting = FeeSetting(**model)
        if setting.channel_id is not None:
            _require(conn, channels, "channel_id", setting.channel_id, "channel")
        return setting
    return check


def add_fee_setting(conn: Connection, *, kind: FeeKind | str, bp: int, valid_from_ms: int,
                    now_ms: int, channel_id: str | None = None,
                    valid_to_ms: int | None = None,
                    rule_id: str | None = None) -> FeeSettingRow:
    """A fee setting; ``channel_fee`` and ``fans_share`` need a channel, ``platform_share``
    is platform-wide (None) or a channel's override."""
    _check_period(valid_from_ms, valid_to_ms)
    model: dict[str, Any] = dict(
        rule_id=_new_id(conn, _FEES, rule_id), kind=kind, channel_id=channel_id, bp=bp,
        valid_from_ms=valid_from_ms, valid_to_ms=valid_to_ms, created_at_ms=now_ms)
    _validated(_fee_check(conn), model)
    model["kind"] = FeeKind(kind)
    conn.execute(fee_settings.insert().values(**_columns(model)))
    return FeeSettingRow(**model)


def end_fee_setting(conn: Connection, rule_id: str, at_ms: int, *, now_ms: int) -> None:
    _end(conn, _FEES, rule_id, at_ms, now_ms)


def edit_fee_setting(conn: Connection, rule_id: str, from_ms: int, *, now_ms: int,
                     bp: int) -> str:
    return _edit(conn, _FEES, rule_id, {"bp": bp}, from_ms, now_ms, _fee_check(conn))


def list_fee_settings(conn: Connection, *, kind: FeeKind | None = None,
                      channel_id: str | None = None,
                      at_ms: int | None = None) -> list[FeeSettingRow]:
    column = fee_settings.c
    conditions = ([] if kind is None else [column.kind == kind.value]) + \
        ([] if channel_id is None else [column.channel_id == channel_id])
    rows = [_fee_row(row) for row in _listed(conn, _FEES, at_ms, *conditions)]
    rows.sort(key=lambda r: (list(FeeKind).index(r.kind), r.channel_id or "", r.valid_from_ms,
                             r.rule_id))
    return rows


def _fee_row(row: Row[Any]) -> FeeSettingRow:
    values = _model_fields(row)
    values["kind"] = FeeKind(values["kind"])
    return FeeSettingRow(**values)


def load_fee_book(conn: Connection) -> FeeBook:
    return FeeBook(_fee_row(row).to_setting()
                   for row in conn.execute(select(fee_settings).where(_live(_FEES))))


# -- group-leader activities ---------------------------------------------------------------

def add_activity(conn: Connection, activity_id: str, *, shop_id: str, leader_id: str,
                 now_ms: int, name: str = "") -> None:
    """A group-leader activity of ``shop_id`` led by the promoter ``leader_id``."""
    _check_id("activity", activity_id)
    if len(name) > NAME_LEN or not name.isprintable():
        raise MasterDataError(f"name: at most {NAME_LEN} printable characters")
    _require(conn, shops, "shop_id", shop_id, "shop")
    _require(conn, promoters, "promoter_id", leader_id, "promoter")
    if _exists(conn, group_leader_activities, "activity_id", activity_id):
        raise MasterDataError(f"activity {activity_id!r} already exists")
    conn.execute(group_leader_activities.insert().values(
        activity_id=activity_id, shop_id=shop_id, leader_id=leader_id, name=name,
        created_at=now_ms))


def join_activity(conn: Connection, activity_id: str, promoter_id: str, *, at_ms: int) -> None:
    """``promoter_id`` joins the activity at ``at_ms`` (its rate applies to lines paid then
    or later)."""
    _require(conn, group_leader_activities, "activity_id", activity_id, "activity")
    _require(conn, promoters, "promoter_id", promoter_id, "promoter")
    member = group_leader_members.c
    if conn.execute(select(exists().where(member.activity_id == activity_id,
                                          member.promoter_id == promoter_id))).scalar():
        raise MasterDataError(f"promoter {promoter_id!r} joined activity {activity_id!r} "
                              "already")
    conn.execute(group_leader_members.insert().values(
        activity_id=activity_id, promoter_id=promoter_id, joined_at=at_ms))


def list_activities(conn: Connection) -> list[Activity]:
    member = group_leader_members.c
    members: dict[str, list[tuple[str, int]]] = {}
    for row in conn.execute(select(member.activity_id, member.promoter_id, member.joined_at)
                            .order_by(member.activity_id, member.promoter_id)):
        members.setdefault(row.activity_id, []).append((row.promoter_id, row.joined_at))
    return [Activity(row.activity_id, row.shop_id, row.leader_id, row.name, row.created_at,
                     tuple(members.get(row.activity_id, ())))
            for row in conn.execute(select(group_leader_activities)
                                    .order_by(group_leader_activities.c.activity_id))]


# -- memberships ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Joined:
    all_ids: frozenset[str]
    latest_ms: int  # the latest joined_at: at or after it, all_ids applies as it is
    joined: tuple[tuple[str, int], ...]  # (activity_id, joined_at_ms)


class Memberships:
    """Each promoter's bases and group-leader activities (with their join times)."""

    def __init__(self, bases: Iterable[tuple[str, str]],
                 activities: Iterable[tuple[str, str, int]]) -> None:
        """``bases``: (promoter, base); ``activities``: (promoter, activity, joined_at_ms)."""
        by_promoter: dict[str, set[str]] = {}
        for promoter_id, base_id in bases:
            by_promoter.setdefault(promoter_id, set()).add(base_id)
        self._bases = {p: frozenset(ids) for p, ids in by_promoter.items()}
        joined: dict[str, list[tuple[str, int]]] = {}
        for promoter_id, activity_id, joined_at_ms in activities:
            joined.setdefault(promoter_id, []).append((activity_id, joined_at_ms))
        self._activities = {p: _Joined(frozenset(a for a, _ in pairs),
                                       max(at for _, at in pairs), tuple(pairs))
                            for p, pairs in joined.items()}

    def bases_of(self, promoter_id: str) -> frozenset[str]:
        return self._bases.get(promoter_id, _EMPTY)

    def activities_of(self, promoter_id: str, at_ms: int | None = None) -> frozenset[str]:
        """The activities ``promoter_id`` joined (by ``at_ms``, when given)."""
        found = self._activities.get(promoter_id)
        if found is None:
            return _EMPTY
        if at_ms is None or at_ms >= found.latest_ms:
            return found.all_ids
        return frozenset(a for a, joined_at in found.joined if joined_at <= at_ms)

    def line_key(self, *, shop_id: str, product_id: str, category_id: str | None,
                 promoter_id: str | None, paid_at_ms: int) -> LineKey:
        """The ``rates.LineKey`` of a line paid at ``paid_at_ms``."""
        if promoter_id is None:
            return LineKey(shop_id, product_id, category_id, None, paid_at_ms=paid_at_ms)
        return LineKey(shop_id, product_id, category_id, promoter_id,
                       self.bases_of(promoter_id), self.activities_of(promoter_id, paid_at_ms),
                       paid_at_ms)


def load_memberships(conn: Connection) -> Memberships:
    base, member = promoter_base_members.c, group_leader_members.c
    return Memberships(
        ((row.promoter_id, row.base_id) for row in conn.execute(
            select(base.promoter_id, base.base_id))),
        ((row.promoter_id, row.activity_id, row.joined_at) for row in conn.execute(
            select(member.promoter_id, member.activity_id, member.joined_at))))


# -- settlement schedules ------------------------------------------------------------------

def set_schedule(conn: Connection, rule: ScheduleRule, *, now_ms: int) -> bool:
    """Insert or replace the rule for its (channel, kind); True when it replaced one."""
    if rule.channel_id != ANY:
        _require(conn, channels, "channel_id", rule.channel_id, "channel")
    column = settlement_schedules.c
    where = (column.channel_id == rule.channel_id,
             column.participant_kind == rule.participant_kind)
    values = {"mode": rule.mode.value, "delay_days": rule.delay_days, "updated_at": now_ms}
    replaced = conn.execute(settlement_schedules.update().where(*where).values(**values))
    if replaced.rowcount:
        return True
    conn.execute(settlement_schedules.insert().values(
        channel_id=rule.channel_id, participant_kind=rule.participant_kind, **values))
    return False


def remove_schedule(conn: Connection, channel_id: str, participant_kind: str) -> None:
    column = settlement_schedules.c
    done = conn.execute(settlement_schedules.delete().where(
        column.channel_id == channel_id, column.participant_kind == participant_kind))
    if not done.rowcount:
        raise MasterDataError(f"no schedule for channel {channel_id!r} and participant "
                              f"{participant_kind!r}")


def list_schedules(conn: Connection) -> list[ScheduleRow]:
    column = settlement_schedules.c
    rows = conn.execute(select(settlement_schedules)
                        .order_by(column.channel_id, column.participant_kind))
    return [ScheduleRow(ScheduleRule(row.channel_id, row.participant_kind,
                                     ScheduleMode(row.mode), row.delay_days), row.updated_at)
            for row in rows]


def load_schedule(conn: Connection,
                  default_delay_days: int = DEFAULT_DELAY_DAYS) -> SettlementSchedule:
    return SettlementSchedule((row.rule for row in list_schedules(conn)), default_delay_days)


# -- checks and messages -------------------------------------------------------------------

def _when(ms: int) -> str:
    moment = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{moment}.{ms % 1000:03d}Z"


def _check_id(kind: str, value: object) -> None:
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise MasterDataError(f"{kind} id {value!r} must match {ID_PATTERN.pattern}")


def _exists(conn: Connection, table: Table, column: str, value: str) -> bool:
    return bool(conn.execute(select(exists().where(table.c[column] == value))).scalar())


def _require(conn: Connection, table: Table, column: str, value: str, kind: str) -> None:
    if not _exists(conn, table, column, value):
        raise MasterDataError(f"no {kind} {value!r}")
