"""The ledger's tables: one ``MetaData`` of Core tables, the same on SQLite and PostgreSQL.

Conventions (so that attribution, billing and the back-end read rows the same way):

* every time is a ``BIGINT`` of milliseconds since the epoch (``*_at``, ``event_ts``);
* every amount is a ``BIGINT`` of minor units (``*_amount``); no floats, no NUMERIC;
* ids are ``VARCHAR(64)`` following ``contracts.orders.ID_PATTERN``; opaque strings
  (visitor ids, accounts, tokens) ``VARCHAR(1024)`` like ``contracts.orders.MAX_OPAQUE_LEN``;
* enums are short strings checked by a CHECK constraint (no dialect enum types);
* constraint and index names come from ``NAMING``, so migrations name them identically
  on both dialects.

Master data (written by ``cps-admin``):

``shops``                  shop_id, name, cross_shop_opt_out (the shop refuses site-wide
                           links' clicks), created_at
``shop_cps_periods``       (shop_id, joined_at) -> exited_at: a shop may join, exit and
                           rejoin; it has the CPS attribute at T when some period has
                           joined_at <= T and (exited_at is null or T < exited_at + 15 days)
``channels``               channel_id, name, created_at
``channel_authorisations`` (channel_id, shop_id, authorised_at) -> revoked_at: the shop
                           authorised the channel's app (self-operated mode) in that period
``promoters``              promoter_id, account_id (the trade-system account, to spot
                           self-purchase), self_purchase ('allow' | 'deny' | NULL = the
                           platform default), webhook_url, webhook_secret, created_at
``promoter_bases``         base_id, shop_id (NULL = platform-wide), name, created_at
``promoter_base_members``  (base_id, promoter_id)

Orders (written by ``attribution_worker.order_store`` from ``cps.orders.v1``):

``orders``        the latest applied snapshot of each order; ``event_ts`` is that
                  snapshot's, ``updated_at`` when the ledger last changed the row
``order_items``   (order_id, item_id): the line and its refunds so far:
                  ``refunded_amount`` = completed refunds, ``refund_pending_amount``
                  = pending ones (a pending refund holds settlement)
``order_refunds`` (order_id, refund_id): each refund of an item; its status only
                  moves forward (pending -> completed | rejected)
``dead_letters``  messages a consumer could not use: where they came from (topic,
                  partition, offset, key), the raw bytes, the reason and the field;
                  ``replayed_at`` / ``replay_result`` / ``replay_reason`` once replayed

Attribution (written by the attribution service):

``attribution_decisions`` one final decision per order (``contracts.attribution``)
``attribution_pending``   orders waiting for (another) attribution attempt, by
                          ``next_attempt_at``
``outbox``                records to publish to Kafka in the order of ``id``, written in
                          the transaction that made them; ``published_at`` once acked

Foreign keys tie the master-data tables together (SQLite enforces them too, see
``ledger_db.engine``).  The order and attribution tables, written at 10,000 orders/s,
carry none: a PostgreSQL FK check is a trigger running a query per row, measured at
66 of 86 ms for inserting 1,000 orders (two FKs), more than the rest of the write.  Their
integrity is their writers' job: the order store checks the shop and channel of every
message against master data in the transaction that writes the order (master data is
never deleted), and writes an order, its items and its refunds together; the
attribution service only decides orders it read from ``orders``.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    false,
)

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

ID_LEN = 64
OPAQUE_LEN = 1024
NAME_LEN = 200
URL_LEN = 2048
# SQLite only auto-numbers an INTEGER PRIMARY KEY (64-bit there anyway); elsewhere BIGINT,
# because the outbox takes one row per order and 2^31 of them is days at 10,000 orders/s.
SERIAL = BigInteger().with_variant(Integer(), "sqlite")

ORDER_STATUSES = ("created", "paid", "received", "final", "cancelled", "refunded")
REFUND_STATUSES = ("pending", "completed", "rejected")
SELF_PURCHASE_POLICIES = ("allow", "deny")
ATTRIBUTION_TYPES = ("cps", "self_operated", "none")
EVIDENCE_KINDS = ("click", "token", "fanstype", "none")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _id(name: str, *args: object, **kwargs: object) -> Column[str]:
    return Column(name, String(ID_LEN), *args, **kwargs)  # type: ignore[arg-type]


def _ms(name: str, *, nullable: bool = False, index: bool = False,
        primary_key: bool = False) -> Column[int]:
    return Column(name, BigInteger, nullable=nullable, index=index, primary_key=primary_key)


def _minor(name: str) -> Column[int]:
    return Column(name, BigInteger, nullable=False, server_default="0")


# -- master data ---------------------------------------------------------------------------

shops = Table(
    "shops", metadata,
    _id("shop_id", primary_key=True),
    Column("name", String(NAME_LEN), nullable=False, server_default=""),
    Column("cross_shop_opt_out", Boolean, nullable=False, server_default=false()),
    _ms("created_at"),
)

shop_cps_periods = Table(
    "shop_cps_periods", metadata,
    _id("shop_id", ForeignKey("shops.shop_id"), primary_key=True),
    _ms("joined_at", primary_key=True),
    _ms("exited_at", nullable=True),
    CheckConstraint("exited_at IS NULL OR exited_at >= joined_at", name="exit_after_join"),
)

channels = Table(
    "channels", metadata,
    _id("channel_id", primary_key=True),
    Column("name", String(NAME_LEN), nullable=False, server_default=""),
    _ms("created_at"),
)

channel_authorisations = Table(
    "channel_authorisations", metadata,
    _id("channel_id", ForeignKey("channels.channel_id"), primary_key=True),
    _id("shop_id", ForeignKey("shops.shop_id"), primary_key=True, index=True),
    _ms("authorised_at", primary_key=True),
    _ms("revoked_at", nullable=True),
    CheckConstraint("revoked_at IS NULL OR revoked_at >= authorised_at",
                    name="revoke_after_authorise"),
)

promoters = Table(
    "promoters", metadata,
    _id("promoter_id", primary_key=True),
    Column("account_id", String(OPAQUE_LEN), nullable=True, index=True),
    Column("self_purchase", String(8), nullable=True),
    Column("webhook_url", String(URL_LEN), nullable=True),
    Column("webhook_secret", String(OPAQUE_LEN), nullable=True),
    _ms("created_at"),
    CheckConstraint(_one_of("self_purchase", SELF_PURCHASE_POLICIES), name="self_purchase"),
)

promoter_bases = Table(
    "promoter_bases", metadata,
    _id("base_id", primary_key=True),
    _id("shop_id", ForeignKey("shops.shop_id"), nullable=True, index=True),
    Column("name", String(NAME_LEN), nullable=False, server_default=""),
    _ms("created_at"),
)

promoter_base_members = Table(
    "promoter_base_members", metadata,
    _id("base_id", ForeignKey("promoter_bases.base_id"), primary_key=True),
    _id("promoter_id", ForeignKey("promoters.promoter_id"), primary_key=True, index=True),
)

# -- orders --------------------------------------------------------------------------------

orders = Table(
    "orders", metadata,
    _id("order_id", primary_key=True),
    _id("shop_id", nullable=False),
    Column("buyer_key", String(OPAQUE_LEN), nullable=True),
    Column("buyer_account", String(OPAQUE_LEN), nullable=True),
    _id("channel_id", nullable=True),
    Column("fanstype", String(OPAQUE_LEN), nullable=True),
    Column("attribution_token", String(OPAQUE_LEN), nullable=True),
    Column("status", String(16), nullable=False, index=True),
    _ms("created_at"),
    _ms("paid_at", nullable=True),
    _ms("received_at", nullable=True),
    _ms("final_at", nullable=True),
    _ms("event_ts"),
    _ms("updated_at"),
    CheckConstraint(_one_of("status", ORDER_STATUSES), name="status"),
    Index(None, "shop_id", "created_at"),
)

order_items = Table(
    "order_items", metadata,
    _id("order_id", primary_key=True),
    _id("item_id", primary_key=True),
    _id("product_id", nullable=False),
    _id("category_id", nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("paid_amount", BigInteger, nullable=False),
    _minor("refunded_amount"),
    _minor("refund_pending_amount"),
    CheckConstraint("refunded_amount + refund_pending_amount <= paid_amount",
                    name="refunds_within_paid"),
)

order_refunds = Table(
    "order_refunds", metadata,
    _id("order_id", primary_key=True),
    _id("refund_id", primary_key=True),
    _id("item_id", nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    _ms("requested_at"),
    CheckConstraint(_one_of("status", REFUND_STATUSES), name="status"),
)

dead_letters = Table(
    "dead_letters", metadata,
    Column("id", SERIAL, primary_key=True, autoincrement=True),
    Column("source", String(255), nullable=False),  # e.g. the topic name
    Column("kafka_partition", Integer, nullable=True),
    Column("kafka_offset", BigInteger, nullable=True),
    Column("key", LargeBinary, nullable=True),
    Column("raw", LargeBinary, nullable=False),
    Column("reason", Text, nullable=False),
    Column("field", String(255), nullable=True),
    Column("order_id", String(OPAQUE_LEN), nullable=True, index=True),  # when it could be read
    _ms("received_at"),
    _ms("replayed_at", nullable=True),
    Column("replay_result", String(16), nullable=True),  # applied | ignored | dead_lettered
    Column("replay_reason", Text, nullable=True),
    # A redelivered message (same topic, partition and offset) is dead-lettered once.
    Index(None, "source", "kafka_partition", "kafka_offset", unique=True),
)

# -- attribution ---------------------------------------------------------------------------

attribution_decisions = Table(
    "attribution_decisions", metadata,
    _id("order_id", primary_key=True),
    Column("attribution_type", String(16), nullable=False),
    _id("promoter_id", nullable=True, index=True),
    _id("channel_id", nullable=True),
    _id("position_id", nullable=True),
    Column("click_id", String(28), nullable=True),
    Column("evidence", String(16), nullable=False),
    Column("reason", String(500), nullable=False),
    _ms("order_created_at"),
    _ms("decided_at"),
    Column("attempts", Integer, nullable=False, server_default="1"),
    CheckConstraint(_one_of("attribution_type", ATTRIBUTION_TYPES), name="attribution_type"),
    CheckConstraint(_one_of("evidence", EVIDENCE_KINDS), name="evidence"),
)

attribution_pending = Table(
    "attribution_pending", metadata,
    _id("order_id", primary_key=True),
    _ms("first_seen_at"),
    _ms("next_attempt_at", index=True),
    Column("attempts", Integer, nullable=False, server_default="0"),
)

outbox = Table(
    "outbox", metadata,
    Column("id", SERIAL, primary_key=True, autoincrement=True),
    Column("topic", String(255), nullable=False),
    Column("key", LargeBinary, nullable=True),
    Column("payload", LargeBinary, nullable=False),
    _ms("created_at"),
    _ms("published_at", nullable=True),
    # "Unpublished, in order": WHERE published_at IS NULL ORDER BY id.
    Index(None, "published_at", "id"),
)
