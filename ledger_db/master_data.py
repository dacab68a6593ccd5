"""Master data: shops and their CPS periods, channels and their authorisations, promoters,
promoter bases; the writes ``cps-admin`` makes and the rules the services read.

Rules (SPEC sections 2 and 7):

* A shop has the **CPS attribute at T** when one of its periods has ``joined_at <= T`` and
  either no exit or ``T < exited_at + CPS_EXIT_GRACE_MS`` (15 days): an order created less
  than 15 days after the shop left commission promotion is still CPS.  Periods never
  overlap: a shop joins again only at or after its last exit.
* A channel is **authorised by a shop at T** when an authorisation has
  ``authorised_at <= T`` and either no revocation or ``T < revoked_at``.
* A promoter's ``self_purchase`` is ``allow``, ``deny`` or NULL (the platform default).

Every write takes an open ``Connection`` (the caller owns the transaction) and raises
``MasterDataError`` with an operator-readable reason for ids that do not follow
``contracts.orders.ID_PATTERN``, duplicates, unknown references and impossible periods.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Column, Connection, exists, literal, or_, select

from contracts.orders import ID_PATTERN
from ledger_db.schema import (
    NAME_LEN,
    OPAQUE_LEN,
    URL_LEN,
    channel_authorisations,
    channels,
    promoter_base_members,
    promoter_bases,
    promoters,
    shop_cps_periods,
    shops,
)

CPS_EXIT_GRACE_MS = 15 * 86_400_000


class MasterDataError(ValueError):
    """A master-data change that cannot be made; the message says why."""


class SelfPurchase(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class Period:
    start_ms: int
    end_ms: int | None  # exclusive; None = still open


@dataclass(frozen=True, slots=True)
class Shop:
    shop_id: str
    name: str
    cross_shop_opt_out: bool
    created_at: int
    cps_periods: tuple[Period, ...]  # joined_at .. exited_at, oldest first


@dataclass(frozen=True, slots=True)
class Channel:
    channel_id: str
    name: str
    created_at: int
    authorisations: tuple[tuple[str, Period], ...]  # (shop_id, authorised .. revoked)


@dataclass(frozen=True, slots=True)
class Promoter:
    promoter_id: str
    account_id: str | None
    self_purchase: SelfPurchase | None
    webhook_url: str | None
    created_at: int


@dataclass(frozen=True, slots=True)
class PromoterBase:
    base_id: str
    shop_id: str | None
    name: str
    created_at: int
    members: tuple[str, ...]


def has_cps_attribute(periods: Sequence[Period], at_ms: int) -> bool:
    """The rule above over a shop's periods (pure)."""
    return any(p.start_ms <= at_ms and (p.end_ms is None or at_ms < p.end_ms + CPS_EXIT_GRACE_MS)
               for p in periods)


def shop_has_cps_attribute(conn: Connection, shop_id: str, at_ms: int) -> bool:
    period = shop_cps_periods.c
    query = select(exists().where(
        period.shop_id == shop_id, period.joined_at <= at_ms,
        or_(period.exited_at.is_(None), literal(at_ms) < period.exited_at + CPS_EXIT_GRACE_MS)))
    return bool(conn.execute(query).scalar())


def channel_authorised(conn: Connection, channel_id: str, shop_id: str, at_ms: int) -> bool:
    auth = channel_authorisations.c
    query = select(exists().where(
        auth.channel_id == channel_id, auth.shop_id == shop_id, auth.authorised_at <= at_ms,
        or_(auth.revoked_at.is_(None), literal(at_ms) < auth.revoked_at)))
    return bool(conn.execute(query).scalar())


# -- shops ---------------------------------------------------------------------------------

def add_shop(conn: Connection, shop_id: str, *, now_ms: int, name: str = "",
             cross_shop_opt_out: bool = False) -> None:
    _check_id("shop", shop_id)
    _check_name(name)
    if _exists(conn, shops.c.shop_id, shop_id):
        raise MasterDataError(f"shop {shop_id!r} already exists")
    conn.execute(shops.insert().values(shop_id=shop_id, name=name,
                                       cross_shop_opt_out=cross_shop_opt_out, created_at=now_ms))


def join_cps(conn: Connection, shop_id: str, at_ms: int) -> None:
    """The shop joins commission promotion at ``at_ms``."""
    _require(conn, shops.c.shop_id, shop_id, "shop")
    for period in _periods(conn, shop_id):
        if period.end_ms is None:
            raise MasterDataError(f"shop {shop_id!r} is in CPS already (since "
                                  f"{_when(period.start_ms)})")
        if at_ms < period.end_ms:
            raise MasterDataError(f"shop {shop_id!r} exited CPS at {_when(period.end_ms)}: it "
                                  "can join again at that time or later")
    conn.execute(shop_cps_periods.insert().values(shop_id=shop_id, joined_at=at_ms))


def exit_cps(conn: Connection, shop_id: str, at_ms: int) -> None:
    """The shop leaves commission promotion at ``at_ms`` (CPS for 15 more days)."""
    _require(conn, shops.c.shop_id, shop_id, "shop")
    open_periods = [p for p in _periods(conn, shop_id) if p.end_ms is None]
    if not open_periods:
        raise MasterDataError(f"shop {shop_id!r} is not in CPS")
    joined = open_periods[0].start_ms
    if at_ms < joined:
        raise MasterDataError(f"shop {shop_id!r} joined CPS at {_when(joined)}: it cannot "
                              "exit before")
    period = shop_cps_periods.c
    conn.execute(shop_cps_periods.update()
                 .where(period.shop_id == shop_id, period.joined_at == joined)
                 .values(exited_at=at_ms))


def list_shops(conn: Connection) -> list[Shop]:
    periods: dict[str, list[Period]] = {}
    period = shop_cps_periods.c
    for row in conn.execute(select(period.shop_id, period.joined_at, period.exited_at)
                            .order_by(period.shop_id, period.joined_at)):
        periods.setdefault(row.shop_id, []).append(Period(row.joined_at, row.exited_at))
    return [Shop(row.shop_id, row.name, bool(row.cross_shop_opt_out), row.created_at,
                 tuple(periods.get(row.shop_id, ())))
            for row in conn.execute(select(shops).order_by(shops.c.shop_id))]


def _periods(conn: Connection, shop_id: str) -> list[Period]:
    period = shop_cps_periods.c
    rows = conn.execute(select(period.joined_at, period.exited_at)
                        .where(period.shop_id == shop_id).order_by(period.joined_at))
    return [Period(row.joined_at, row.exited_at) for row in rows]


# -- channels ------------------------------------------------------------------------------

def add_channel(conn: Connection, channel_id: str, *, now_ms: int, name: str = "") -> None:
    _check_id("channel", channel_id)
    _check_name(name)
    if _exists(conn, channels.c.channel_id, channel_id):
        raise MasterDataError(f"channel {channel_id!r} already exists")
    conn.execute(channels.insert().values(channel_id=channel_id, name=name, created_at=now_ms))


def authorise_channel(conn: Connection, channel_id: str, shop_id: str, at_ms: int) -> None:
    """The shop authorises the channel's app from ``at_ms`` on (self-operated mode)."""
    _require(conn, channels.c.channel_id, channel_id, "channel")
    _require(conn, shops.c.shop_id, shop_id, "shop")
    for period in _authorisations(conn, channel_id, shop_id):
        if period.end_ms is None:
            raise MasterDataError(f"shop {shop_id!r} authorised channel {channel_id!r} already "
                                  f"(at {_when(period.start_ms)})")
        if at_ms < period.end_ms:
            raise MasterDataError(f"the authorisation was revoked at {_when(period.end_ms)}: "
                                  "authorise again at that time or later")
    conn.execute(channel_authorisations.insert().values(
        channel_id=channel_id, shop_id=shop_id, authorised_at=at_ms))


def revoke_channel(conn: Connection, channel_id: str, shop_id: str, at_ms: int) -> None:
    _require(conn, channels.c.channel_id, channel_id, "channel")
    _require(conn, shops.c.shop_id, shop_id, "shop")
    current = [p for p in _authorisations(conn, channel_id, shop_id) if p.end_ms is None]
    if not current:
        raise MasterDataError(f"shop {shop_id!r} has not authorised channel {channel_id!r}")
    since = current[0].start_ms
    if at_ms < since:
        raise MasterDataError(f"authorised at {_when(since)}: it cannot be revoked before")
    auth = channel_authorisations.c
    conn.execute(channel_authorisations.update()
                 .where(auth.channel_id == channel_id, auth.shop_id == shop_id,
                        auth.authorised_at == since)
                 .values(revoked_at=at_ms))


def list_channels(conn: Connection) -> list[Channel]:
    auth = channel_authorisations.c
    grants: dict[str, list[tuple[str, Period]]] = {}
    for row in conn.execute(select(channel_authorisations)
                            .order_by(auth.channel_id, auth.shop_id, auth.authorised_at)):
        grants.setdefault(row.channel_id, []).append(
            (row.shop_id, Period(row.authorised_at, row.revoked_at)))
    return [Channel(row.channel_id, row.name, row.created_at,
                    tuple(grants.get(row.channel_id, ())))
            for row in conn.execute(select(channels).order_by(channels.c.channel_id))]


def _authorisations(conn: Connection, channel_id: str, shop_id: str) -> list[Period]:
    auth = channel_authorisations.c
    rows = conn.execute(select(auth.authorised_at, auth.revoked_at)
                        .where(auth.channel_id == channel_id, auth.shop_id == shop_id)
                        .order_by(auth.authorised_at))
    return [Period(row.authorised_at, row.revoked_at) for row in rows]


# -- promoters and bases -------------------------------------------------------------------

def add_promoter(conn: Connection, promoter_id: str, *, now_ms: int,
                 account_id: str | None = None, self_purchase: SelfPurchase | None = None,
                 webhook_url: str | None = None) -> None:
    _check_id("promoter", promoter_id)
    if account_id is not None and not 0 < len(account_id) <= OPAQUE_LEN:
        raise MasterDataError(f"account id: 1 to {OPAQUE_LEN} characters")
    if webhook_url is not None:
        _check_webhook_url(webhook_url)
    if _exists(conn, promoters.c.promoter_id, promoter_id):
        raise MasterDataError(f"promoter {promoter_id!r} already exists")
    conn.execute(promoters.insert().values(
        promoter_id=promoter_id, account_id=account_id,
        self_purchase=None if self_purchase is None else self_purchase.value,
        webhook_url=webhook_url, created_at=now_ms))


def list_promoters(conn: Connection) -> list[Promoter]:
    rows = conn.execute(select(promoters).order_by(promoters.c.promoter_id))
    return [Promoter(row.promoter_id, row.account_id,
                     None if row.self_purchase is None else SelfPurchase(row.self_purchase),
                     row.webhook_url, row.created_at) for row in rows]


def add_base(conn: Connection, base_id: str, *, now_ms: int, shop_id: str | None = None,
             name: str = "") -> None:
    _check_id("base", base_id)
    _check_name(name)
    if shop_id is not None:
        _require(conn, shops.c.shop_id, shop_id, "shop")
    if _exists(conn, promoter_bases.c.base_id, base_id):
        raise MasterDataError(f"base {base_id!r} already exists")
    conn.execute(promoter_bases.insert().values(base_id=base_id, shop_id=shop_id, name=name,
                                                created_at=now_ms))


def add_base_member(conn: Connection, base_id: str, promoter_id: str) -> None:
    _require(conn, promoter_bases.c.base_id, base_id, "base")
    _require(conn, promoters.c.promoter_id, promoter_id, "promoter")
    member = promoter_base_members.c
    if conn.execute(select(exists().where(member.base_id == base_id,
                                          member.promoter_id == promoter_id))).scalar():
        raise MasterDataError(f"promoter {promoter_id!r} is in base {base_id!r} already")
    conn.execute(promoter_base_members.insert().values(base_id=base_id, promoter_id=promoter_id))


def list_bases(conn: Connection) -> list[PromoterBase]:
    member = promoter_base_members.c
    members: dict[str, list[str]] = {}
    for row in conn.execute(select(member.base_id, member.promoter_id)
                            .order_by(member.base_id, member.promoter_id)):
        members.setdefault(row.base_id, []).append(row.promoter_id)
    return [PromoterBase(row.base_id, row.shop_id, row.name, row.created_at,
                         tuple(members.get(row.base_id, ())))
            for row in conn.execute(select(promoter_bases).order_by(promoter_bases.c.base_id))]


# -- checks and messages ---------------------------------------------------------------

def _when(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{moment}.{ms % 1000:03d}Z ({ms} ms)"


def _check_id(kind: str, value: str) -> None:
    if not ID_PATTERN.fullmatch(value):
        raise MasterDataError(f"{kind} id {value!r} must match {ID_PATTERN.pattern}")


def _check_name(name: str) -> None:
    if len(name) > NAME_LEN or not name.isprintable():
        raise MasterDataError(f"name: at most {NAME_LEN} printable characters")


def _check_webhook_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        host = None
    if not host or parts.scheme not in ("http", "https") or len(url) > URL_LEN \
            or not url.isprintable() or " " in url:
        raise MasterDataError(f"webhook URL {url!r}: an http(s) URL with a host, at most "
                              f"{URL_LEN} characters")


def _exists(conn: Connection, column: Column[Any], value: str) -> bool:
    return bool(conn.execute(select(exists().where(column == value))).scalar())


def _require(conn: Connection, column: Column[Any], value: str, kind: str) -> None:
    if not _exists(conn, column, value):
        raise MasterDataError(f"no {kind} {value!r}")
