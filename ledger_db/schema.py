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

Billing master data (written by ``cps-billing rates|channel-rates|fees|activities|schedule``;
rows are versions: an edit ends one at a time and starts a new one, ``supersedes`` naming
the version it replaced, so a rate valid at a past instant never changes):

``rate_rules``              one promotion rate of SPEC §8 at one level with its validity
                            ``[valid_from, valid_to)``; the level says which of product_id,
                            promoter_id, base_id, activity_id, category_id it matches on
``group_leader_activities`` activity_id -> shop, leader (a promoter), name
``group_leader_members``    (activity_id, promoter_id): promoters who joined it
``channel_rates``           the self-operated rate of a channel, per category or channel-wide
``fee_settings``            platform share, channel fee and fans share, with validity
``settlement_schedules``    (channel_id | '*', participant_kind | '*') -> T+N days or monthly

Billing (written by ``cps-billing run``; see ``billing_batch``):

``commission_lines``  (order_id, item_id): the terms frozen at payment (rate, its level
                      and rule, fees) and the line's current commission, computed on
                      ``accrued_paid_amount`` (paid - refunded when last accrued), and the
                      state of its money in the ledger (``ledger_state``)
``billing_charges``   one charge of the merchant per order (pending -> charged | failed)
``ledger_accounts``   every account the ledger has moved money through
``ledger_transfers``  immutable two-phase transfers (TigerBeetle's model): ``posted``
                      single-phase, ``pending`` reservations resolved at most once (the
                      unique ``pending_id``) by a ``post`` or a ``void``; deterministic
                      UUIDs from (order, item, account, code, sequence)
``billing_runs``      one row per run: as-of, status, the resume cursor and the summary
``payouts``           what a run pays each participant (the payment provider's file)

Order center outward (issue: pushes, product selection, back-ends):

``merchants``, ``merchant_shops``  who may manage which shops in the merchant back-end
``api_keys``               API keys of promoters and merchants: only a hash is kept
                           (``key_hash``), the key is shown once; revocable, several each
``positions``              a promoter's promotion positions (推广位) on a channel
``promoter_links``         links a promoter minted through the back-end (the link itself is
                           stateless and signed; this is the promoter's list of them)
``products``               the product catalogue (shop, product, category, title, price)
``channel_prohibited_products`` / ``channel_prohibited_categories``
                           what a channel's operator does not allow promoted
``click_counts_daily``     valid clicks per promoter, channel, position and UTC day (the
                           back-end's chart; the click store has no per-promoter index)
``webhook_endpoints``      a promoter's or a channel's URL for pushes, active or disabled
``webhook_secrets``        its signing secrets (several active while rotating), sealed
``webhook_events``         one row per business event (order status, commission, payout),
                           deterministic ``event_id``: produced once however often replayed
``webhook_deliveries``     (event, endpoint): pending -> delivered | dead, per endpoint in
                           ``id`` order, with the retry schedule's ``next_attempt_at``
``webhook_attempts``       the delivery log: every attempt, status code, latency, error

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
    Uuid,
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
RATE_LEVELS = ("targeted_product", "targeted_base", "group_leader", "generic_product",
               "shop_category", "shop_generic")
FEE_KINDS = ("platform_share", "channel_fee", "fans_share")
COMMISSION_MODES = ("cps", "self_operated", "none")
LINE_STATUSES = ("accrued", "no_commission")
LEDGER_STATES = ("open", "partial", "settled", "none")
CHARGE_STATUSES = ("pending", "charged", "failed")
SCHEDULE_MODES = ("delay", "monthly")
ACCOUNT_KINDS = ("merchant", "frozen", "promoter", "channel", "platform", "group_leader", "fans",
                 "payout")
TRANSFER_FLAGS = ("posted", "pending", "post", "void")
TRANSFER_CODES = ("freeze", "commission", "settle", "void", "unfreeze", "clawback", "adjust",
                  "payout")
RUN_STATUSES = ("running", "finished", "failed")
OWNER_KINDS = ("promoter", "channel")
KEY_OWNER_KINDS = ("promoter", "merchant")
ENDPOINT_STATUSES = ("active", "disabled")
DELIVERY_STATUSES = ("pending", "delivered", "dead")
PRODUCT_STATUSES = ("listed", "delisted")
ACCOUNT_LEN = 80


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

# -- billing master data -------------------------------------------------------------------


def _validity() -> tuple[Column[int], Column[int], Column[int], Column[str]]:
    return (_ms("valid_from"), _ms("valid_to", nullable=True), _ms("created_at"),
            _id("supersedes", nullable=True))


def _bp(name: str, *, nullable: bool = False) -> Column[int]:
    return Column(name, Integer, nullable=nullable)


rate_rules = Table(
    "rate_rules", metadata,
    _id("rule_id", primary_key=True),
    Column("level", String(24), nullable=False),
    _id("shop_id", nullable=False, index=True),
    _id("product_id", nullable=True),
    _id("promoter_id", nullable=True),
    _id("base_id", nullable=True),
    _id("activity_id", nullable=True),
    _id("category_id", nullable=True),
    _bp("rate_bp"),
    _bp("leader_rate_bp", nullable=True),
    *_validity(),
    CheckConstraint(_one_of("level", RATE_LEVELS), name="level"),
    CheckConstraint("rate_bp BETWEEN 0 AND 10000", name="rate_bp"),
    CheckConstraint("leader_rate_bp IS NULL OR leader_rate_bp BETWEEN 0 AND 10000",
                    name="leader_rate_bp"),
    CheckConstraint("valid_to IS NULL OR valid_to >= valid_from", name="validity"),
)

group_leader_activities = Table(
    "group_leader_activities", metadata,
    _id("activity_id", primary_key=True),
    _id("shop_id", ForeignKey("shops.shop_id"), nullable=False, index=True),
    _id("leader_id", ForeignKey("promoters.promoter_id"), nullable=False),
    Column("name", String(NAME_LEN), nullable=False, server_default=""),
    _ms("created_at"),
)

group_leader_members = Table(
    "group_leader_members", metadata,
    _id("activity_id", ForeignKey("group_leader_activities.activity_id"), primary_key=True),
    _id("promoter_id", ForeignKey("promoters.promoter_id"), primary_key=True, index=True),
    _ms("joined_at"),
)

channel_rates = Table(
    "channel_rates", metadata,
    _id("rule_id", primary_key=True),
    _id("channel_id", nullable=False, index=True),
    _id("category_id", nullable=True),
    _bp("rate_bp"),
    *_validity(),
    CheckConstraint("rate_bp BETWEEN 0 AND 10000", name="rate_bp"),
    CheckConstraint("valid_to IS NULL OR valid_to >= valid_from", name="validity"),
)

fee_settings = Table(
    "fee_settings", metadata,
    _id("rule_id", primary_key=True),
    Column("kind", String(16), nullable=False),
    _id("channel_id", nullable=True),
    _bp("bp"),
    *_validity(),
    CheckConstraint(_one_of("kind", FEE_KINDS), name="kind"),
    CheckConstraint("bp BETWEEN 0 AND 10000", name="bp"),
    CheckConstraint("valid_to IS NULL OR valid_to >= valid_from", name="validity"),
)

settlement_schedules = Table(
    "settlement_schedules", metadata,
    _id("channel_id", primary_key=True),  # '*' = every channel
    Column("participant_kind", String(16), primary_key=True),  # '*' = every participant
    Column("mode", String(8), nullable=False),
    Column("delay_days", Integer, nullable=False, server_default="15"),
    _ms("updated_at"),
    CheckConstraint(_one_of("mode", SCHEDULE_MODES), name="mode"),
    CheckConstraint("delay_days >= 0", name="delay_days"),
)

# -- billing -------------------------------------------------------------------------------

commission_lines = Table(
    "commission_lines", metadata,
    _id("order_id", primary_key=True),
    _id("item_id", primary_key=True),
    _id("shop_id", nullable=False),
    Column("mode", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", String(NAME_LEN), nullable=False, server_default=""),
    _id("promoter_id", nullable=True, index=True),
    _id("channel_id", nullable=True),
    _id("rule_id", nullable=True),
    Column("rate_level", String(24), nullable=True),
    _bp("rate_bp", nullable=True),
    _id("activity_id", nullable=True),
    _id("leader_id", nullable=True),
    _bp("leader_rate_bp", nullable=True),
    _bp("platform_share_bp", nullable=True),
    _bp("channel_fee_bp", nullable=True),
    _bp("fans_share_bp", nullable=True),
    _id("platform_share_rule_id", nullable=True),
    _id("channel_fee_rule_id", nullable=True),
    _id("fans_share_rule_id", nullable=True),
    Column("paid_amount", BigInteger, nullable=False),
    Column("accrued_paid_amount", BigInteger, nullable=False),
    Column("commission_amount", BigInteger, nullable=False),
    Column("version", Integer, nullable=False),
    _ms("paid_at"),
    # What the ledger holds for the line (billing_batch.plan.ledger_state): "open" = every
    # share pending as accrued at ``version`` (the run rebuilds it from this row alone),
    # "partial" (read its transfers), "settled" (nothing pending), "none" (no money).
    Column("ledger_state", String(8), nullable=False, server_default="open"),
    _ms("accrued_at"),
    _ms("updated_at"),
    Column("run_id", String(ID_LEN), nullable=False),
    CheckConstraint(_one_of("mode", COMMISSION_MODES), name="mode"),
    CheckConstraint(_one_of("ledger_state", LEDGER_STATES), name="ledger_state"),
    CheckConstraint(_one_of("status", LINE_STATUSES), name="status"),
    CheckConstraint("accrued_paid_amount BETWEEN 0 AND paid_amount", name="accrued_paid"),
    CheckConstraint("commission_amount >= 0", name="commission"),
)

billing_charges = Table(
    "billing_charges", metadata,
    _id("order_id", primary_key=True),
    Column("charge_id", String(ID_LEN + 16), nullable=False, unique=True),
    _id("shop_id", nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("status", String(8), nullable=False, index=True),
    Column("attempts", Integer, nullable=False, server_default="1"),
    Column("reason", Text, nullable=True),
    _ms("requested_at"),
    _ms("updated_at"),
    CheckConstraint(_one_of("status", CHARGE_STATUSES), name="status"),
    CheckConstraint("amount >= 0", name="amount"),
)

ledger_accounts = Table(
    "ledger_accounts", metadata,
    Column("account_id", String(ACCOUNT_LEN), primary_key=True),
    Column("kind", String(16), nullable=False),
    _id("owner_id", nullable=True),
    _ms("created_at"),
    CheckConstraint(_one_of("kind", ACCOUNT_KINDS), name="kind"),
)

ledger_transfers = Table(
    "ledger_transfers", metadata,
    Column("transfer_id", Uuid, primary_key=True),
    Column("debit_account_id", String(ACCOUNT_LEN), nullable=False),
    Column("credit_account_id", String(ACCOUNT_LEN), nullable=False),
    Column("amount", BigInteger, nullable=False),
    # Resolving a pending transfer twice is impossible, not merely checked.
    Column("pending_id", Uuid, nullable=True, unique=True),
    Column("flags", String(8), nullable=False),
    Column("code", String(16), nullable=False),
    _id("order_id", nullable=True, index=True),
    _id("item_id", nullable=True),
    Column("seq", Integer, nullable=False),
    Column("run_id", String(ID_LEN), nullable=False),
    _ms("as_of"),
    CheckConstraint("amount > 0", name="amount"),
    CheckConstraint("debit_account_id <> credit_account_id", name="accounts_differ"),
    CheckConstraint(_one_of("flags", TRANSFER_FLAGS), name="flags"),
    CheckConstraint(_one_of("code", TRANSFER_CODES), name="code"),
    CheckConstraint("(flags IN ('post', 'void')) = (pending_id IS NOT NULL)", name="pending_id"),
)

billing_runs = Table(
    "billing_runs", metadata,
    Column("run_id", String(ID_LEN), primary_key=True),
    _ms("as_of", index=True),
    Column("status", String(8), nullable=False),
    Column("phase", String(16), nullable=False, server_default="accrue"),
    _id("cursor_order_id", nullable=True),
    Column("summary", Text, nullable=True),  # JSON, see billing_batch.run.RunSummary
    _ms("started_at"),
    _ms("finished_at", nullable=True),
    CheckConstraint(_one_of("status", RUN_STATUSES), name="status"),
)

payouts = Table(
    "payouts", metadata,
    Column("payout_id", String(ID_LEN + ACCOUNT_LEN + 1), primary_key=True),
    Column("run_id", String(ID_LEN), nullable=False, index=True),
    Column("account_id", String(ACCOUNT_LEN), nullable=False, index=True),
    Column("amount", BigInteger, nullable=False),
    Column("transfer_id", Uuid, nullable=False, unique=True),
    _ms("as_of"),
    CheckConstraint("amount > 0", name="amount"),
)

# -- order center outward ------------------------------------------------------------------

merchants = Table(
    "merchants", metadata,
    _id("merchant_id", primary_key=True),
    Column("name", String(NAME_LEN), nullable=False, server_default=""),
    _ms("created_at"),
)

merchant_shops = Table(
    "merchant_shops", metadata,
    _id("merchant_id", ForeignKey("merchants.merchant_id"), primary_key=True),
    _id("shop_id", ForeignKey("shops.shop_id"), primary_key=True, index=True),
)

api_keys = Table(
    "api_keys", metadata,
    _id("key_id", primary_key=True),  # the key's public prefix, shown in listings
    Column("owner_kind", String(16), nullable=False),
    _id("owner_id", nullable=False),
    Column("key_hash", String(128), nullable=False, unique=True),
    Column("name", String(NAME_LEN), nullable=False, server_default=""),
    _ms("created_at"),
    _ms("last_used_at", nullable=True),
    _ms("revoked_at", nullable=True),
    CheckConstraint(_one_of("owner_kind", KEY_OWNER_KINDS), name="owner_kind"),
    Index(None, "owner_kind", "owner_id"),
)

positions = Table(
    "positions", metadata,
    _id("position_id", primary_key=True),
    _id("promoter_id", ForeignKey("promoters.promoter_id"), nullable=False, index=True),
    _id("channel_id", ForeignKey("channels.channel_id"), nullable=False),
    Column("name", String(NAME_LEN), nullable=False, server_default=""),
    _ms("created_at"),
)

promoter_links = Table(
    "promoter_links", metadata,
    _id("link_id", primary_key=True),
    _id("promoter_id", nullable=False),
    _id("channel_id", nullable=False),
    _id("position_id", nullable=True),
    _id("shop_id", nullable=True),
    _id("product_id", nullable=True),
    Column("target", String(URL_LEN), nullable=False),
    Column("url", Text, nullable=False),
    _ms("expires_at"),
    _ms("created_at"),
    Index(None, "promoter_id", "created_at"),
)

products = Table(
    "products", metadata,
    _id("shop_id", primary_key=True),
    _id("product_id", primary_key=True),
    _id("category_id", nullable=False),
    Column("title", String(NAME_LEN), nullable=False),
    Column("price_amount", BigInteger, nullable=False),
    Column("status", String(16), nullable=False, server_default="listed"),
    _ms("updated_at"),
    CheckConstraint(_one_of("status", PRODUCT_STATUSES), name="status"),
    CheckConstraint("price_amount >= 0", name="price_amount"),
    Index(None, "category_id"),
)

channel_prohibited_products = Table(
    "channel_prohibited_products", metadata,
    _id("channel_id", primary_key=True),
    _id("shop_id", primary_key=True),
    _id("product_id", primary_key=True),
    _ms("created_at"),
)

channel_prohibited_categories = Table(
    "channel_prohibited_categories", metadata,
    _id("channel_id", primary_key=True),
    _id("category_id", primary_key=True),
    _ms("created_at"),
)

click_counts_daily = Table(
    "click_counts_daily", metadata,
    _id("promoter_id", primary_key=True),
    _id("channel_id", primary_key=True),
    _id("position_id", primary_key=True),  # '' when the link had none
    _ms("day", primary_key=True),          # 00:00 UTC of the day, ms
    Column("clicks", BigInteger, nullable=False, server_default="0"),
)

webhook_endpoints = Table(
    "webhook_endpoints", metadata,
    _id("endpoint_id", primary_key=True),
    Column("owner_kind", String(16), nullable=False),
    _id("owner_id", nullable=False),
    Column("url", String(URL_LEN), nullable=False),
    Column("status", String(16), nullable=False, server_default="active"),
    Column("disabled_reason", String(NAME_LEN), nullable=True),
    _ms("disabled_at", nullable=True),
    _ms("failing_since", nullable=True),  # first failure of the current failing streak
    Column("max_in_flight", Integer, nullable=False, server_default="4"),
    _ms("created_at"),
    _ms("updated_at"),
    CheckConstraint(_one_of("owner_kind", OWNER_KINDS), name="owner_kind"),
    CheckConstraint(_one_of("status", ENDPOINT_STATUSES), name="status"),
    Index(None, "owner_kind", "owner_id"),
)

webhook_secrets = Table(
    "webhook_secrets", metadata,
    _id("endpoint_id", ForeignKey("webhook_endpoints.endpoint_id"), primary_key=True),
    _id("secret_id", primary_key=True),
    Column("secret_sealed", LargeBinary, nullable=False),
    _ms("created_at"),
    _ms("expires_at", nullable=True),  # rotation: the old secret signs until then
)

webhook_events = Table(
    "webhook_events", metadata,
    Column("event_id", String(ID_LEN + 16), primary_key=True),
    Column("event_type", String(64), nullable=False),
    _id("order_id", nullable=True, index=True),
    _id("promoter_id", nullable=True),
    _id("channel_id", nullable=True),
    Column("payload", Text, nullable=False),  # JSON, personal data masked
    _ms("occurred_at"),
    _ms("created_at"),
)

webhook_deliveries = Table(
    "webhook_deliveries", metadata,
    Column("id", SERIAL, primary_key=True, autoincrement=True),
    Column("event_id", String(ID_LEN + 16), nullable=False),
    _id("endpoint_id", nullable=False),
    Column("status", String(16), nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    _ms("next_attempt_at"),
    Column("last_status_code", Integer, nullable=True),
    Column("last_error", String(NAME_LEN), nullable=True),
    _ms("delivered_at", nullable=True),
    _ms("dead_at", nullable=True),
    _ms("created_at"),
    CheckConstraint(_one_of("status", DELIVERY_STATUSES), name="status"),
    Index(None, "event_id", "endpoint_id", unique=True),
    # Per endpoint in order: WHERE endpoint_id = ? AND status = 'pending' ORDER BY id.
    Index(None, "endpoint_id", "status", "id"),
    Index(None, "status", "next_attempt_at"),
)

webhook_attempts = Table(
    "webhook_attempts", metadata,
    Column("id", SERIAL, primary_key=True, autoincrement=True),
    Column("delivery_id", BigInteger, nullable=False, index=True),
    Column("attempt", Integer, nullable=False),
    _ms("started_at"),
    Column("latency_ms", Integer, nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("error", String(NAME_LEN), nullable=True),
)
