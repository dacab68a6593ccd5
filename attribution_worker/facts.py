"""Rows of the ledger database as the plain facts ``attribution_worker.rules`` decides on.

One query per table per batch of orders (``IN`` lists of at most 500 ids), so a
batch of 500 orders costs a handful of round trips, not thousands.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import sqlalchemy
from sqlalchemy import Engine, String
from sqlalchemy.dialects.postgresql import ARRAY

from attribution_worker.rules import (
    ChannelAuthorisation,
    CpsPeriod,
    OrderFacts,
    PromoterFacts,
    SelfPurchase,
    ShopFacts,
)
from ledger_db import schema

_CHUNK = 500


def _in(engine: Engine, column: Any, ids: list[str]) -> Any:
    """``column IN ids``; on PostgreSQL ``= ANY(array)``: one parameter, not 500 (psycopg
    converts every placeholder of a statement on every execution)."""
    if engine.dialect.name == "postgresql":
        return column == sqlalchemy.any_(sqlalchemy.bindparam(None, ids, type_=ARRAY(String)))
    return column.in_(ids)


def _chunks(ids: Iterable[str]) -> Iterator[list[str]]:
    unique = sorted(set(ids))
    for start in range(0, len(unique), _CHUNK):
        yield unique[start:start + _CHUNK]


def load_orders(engine: Engine, order_ids: Iterable[str]) -> dict[str, OrderFacts]:
    table = schema.orders
    found: dict[str, OrderFacts] = {}
    with engine.connect() as connection:
        for chunk in _chunks(order_ids):
            for row in connection.execute(sqlalchemy.select(table).where(
                    _in(engine, table.c.order_id, chunk))).mappings():
                found[row["order_id"]] = order_facts(row)
    return found


def order_facts(row: Any) -> OrderFacts:
    return OrderFacts(order_id=row["order_id"], shop_id=row["shop_id"],
                      buyer_key=row["buyer_key"], buyer_account=row["buyer_account"],
                      created_at_ms=row["created_at"], channel_id=row["channel_id"],
                      fanstype=row["fanstype"], attribution_token=row["attribution_token"])


def load_shops(engine: Engine, shop_ids: Iterable[str]) -> dict[str, ShopFacts]:
    shops, periods, grants = schema.shops, schema.shop_cps_periods, schema.channel_authorisations
    found: dict[str, dict[str, Any]] = {}
    with engine.connect() as connection:
        for chunk in _chunks(shop_ids):
            for row in connection.execute(sqlalchemy.select(
                    shops.c.shop_id, shops.c.cross_shop_opt_out).where(
                    _in(engine, shops.c.shop_id, chunk))):
                found[row.shop_id] = {"opt_out": bool(row.cross_shop_opt_out), "periods": [],
                                      "grants": []}
            for row in connection.execute(sqlalchemy.select(periods).where(
                    _in(engine, periods.c.shop_id, chunk)).order_by(periods.c.joined_at)):
                if row.shop_id in found:
                    found[row.shop_id]["periods"].append(CpsPeriod(row.joined_at, row.exited_at))
            for row in connection.execute(sqlalchemy.select(grants).where(
                    _in(engine, grants.c.shop_id, chunk)).order_by(grants.c.authorised_at)):
                if row.shop_id in found:
                    found[row.shop_id]["grants"].append(ChannelAuthorisation(
                        row.channel_id, row.authorised_at, row.revoked_at))
    return {shop_id: ShopFacts(shop_id, tuple(parts["periods"]), parts["opt_out"],
                               tuple(parts["grants"])) for shop_id, parts in found.items()}


def load_promoters(engine: Engine, promoter_ids: Iterable[str]) -> dict[str, PromoterFacts]:
    table = schema.promoters
    found: dict[str, PromoterFacts] = {}
    with engine.connect() as connection:
        for chunk in _chunks(promoter_ids):
            for row in connection.execute(sqlalchemy.select(
                    table.c.promoter_id, table.c.account_id, table.c.self_purchase).where(
                    _in(engine, table.c.promoter_id, chunk))):
                policy = SelfPurchase(row.self_purchase) if row.self_purchase else None
                found[row.promoter_id] = PromoterFacts(row.promoter_id, row.account_id, policy)
    return found
