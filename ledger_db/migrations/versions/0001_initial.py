"""Initial schema: master data, orders, dead letters, attribution (see ledger_db.schema).

Revision ID: 0001
Revises:
Create Date: 2026-12-04 03:01:35.184234
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "attribution_decisions",
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("attribution_type", sa.String(length=16), nullable=False),
        sa.Column("promoter_id", sa.String(length=64), nullable=True),
        sa.Column("channel_id", sa.String(length=64), nullable=True),
        sa.Column("position_id", sa.String(length=64), nullable=True),
        sa.Column("click_id", sa.String(length=28), nullable=True),
        sa.Column("evidence", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("order_created_at", sa.BigInteger(), nullable=False),
        sa.Column("decided_at", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="1", nullable=False),
        sa.CheckConstraint(
            "attribution_type IN ('cps', 'self_operated', 'none')",
            name=op.f("ck_attribution_decisions_attribution_type"),
        ),
        sa.CheckConstraint(
            "evidence IN ('click', 'token', 'fanstype', 'none')",
            name=op.f("ck_attribution_decisions_evidence"),
        ),
        sa.PrimaryKeyConstraint("order_id", name=op.f("pk_attribution_decisions")),
    )
    op.create_index(
        op.f("ix_attribution_decisions_promoter_id"), "attribution_decisions", ["promoter_id"]
    )
    op.create_table(
        "attribution_pending",
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("first_seen_at", sa.BigInteger(), nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("order_id", name=op.f("pk_attribution_pending")),
    )
    op.create_index(
        op.f("ix_attribution_pending_next_attempt_at"), "attribution_pending", ["next_attempt_at"]
    )
    op.create_table(
        "channels",
        sa.Column("channel_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), server_default="", nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("channel_id", name=op.f("pk_channels")),
    )
    op.create_table(
        "dead_letters",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("source", sa.String(length=255), nullable=False),
        sa.Column("kafka_partition", sa.Integer(), nullable=True),
        sa.Column("kafka_offset", sa.BigInteger(), nullable=True),
        sa.Column("key", sa.LargeBinary(), nullable=True),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("field", sa.String(length=255), nullable=True),
        sa.Column("order_id", sa.String(length=1024), nullable=True),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        sa.Column("replayed_at", sa.BigInteger(), nullable=True),
        sa.Column("replay_result", sa.String(length=16), nullable=True),
        sa.Column("replay_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
    )
    op.create_index(op.f("ix_dead_letters_order_id"), "dead_letters", ["order_id"])
    op.create_index(
        op.f("ix_dead_letters_source_kafka_partition_kafka_offset"),
        "dead_letters",
        ["source", "kafka_partition", "kafka_offset"],
        unique=True,
    )
    op.create_table(
        "outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("topic", sa.String(length=255), nullable=False),
        sa.Column("key", sa.LargeBinary(), nullable=True),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("published_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )
    op.create_index(op.f("ix_outbox_published_at_id"), "outbox", ["published_at", "id"])
    op.create_table(
        "promoters",
        sa.Column("promoter_id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=1024), nullable=True),
        sa.Column("self_purchase", sa.String(length=8), nullable=True),
        sa.Column("webhook_url", sa.String(length=2048), nullable=True),
        sa.Column("webhook_secret", sa.String(length=1024), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "self_purchase IN ('allow', 'deny')", name=op.f("ck_promoters_self_purchase")
        ),
        sa.PrimaryKeyConstraint("promoter_id", name=op.f("pk_promoters")),
    )
    op.create_index(op.f("ix_promoters_account_id"), "promoters", ["account_id"])
    op.create_table(
        "shops",
        sa.Column("shop_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), server_default="", nullable=False),
        sa.Column("cross_shop_opt_out", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("shop_id", name=op.f("pk_shops")),
    )
    op.create_table(
        "channel_authorisations",
        sa.Column("channel_id", sa.String(length=64), nullable=False),
        sa.Column("shop_id", sa.String(length=64), nullable=False),
        sa.Column("authorised_at", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "revoked_at IS NULL OR revoked_at >= authorised_at",
            name=op.f("ck_channel_authorisations_revoke_after_authorise"),
        ),
        sa.ForeignKeyConstraint(
            ["channel_id"],
            ["channels.channel_id"],
            name=op.f("fk_channel_authorisations_channel_id_channels"),
        ),
        sa.ForeignKeyConstraint(
            ["shop_id"], ["shops.shop_id"], name=op.f("fk_channel_authorisations_shop_id_shops")
        ),
        sa.PrimaryKeyConstraint(
            "channel_id", "shop_id", "authorised_at", name=op.f("pk_channel_authorisations")
        ),
    )
    op.create_index(
        op.f("ix_channel_authorisations_shop_id"), "channel_authorisations", ["shop_id"]
    )
    op.create_table(
        "orders",
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("shop_id", sa.String(length=64), nullable=False),
        sa.Column("buyer_key", sa.String(length=1024), nullable=True),
        sa.Column("buyer_account", sa.String(length=1024), nullable=True),
        sa.Column("channel_id", sa.String(length=64), nullable=True),
        sa.Column("fanstype", sa.String(length=1024), nullable=True),
        sa.Column("attribution_token", sa.String(length=1024), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("paid_at", sa.BigInteger(), nullable=True),
        sa.Column("received_at", sa.BigInteger(), nullable=True),
        sa.Column("final_at", sa.BigInteger(), nullable=True),
        sa.Column("event_ts", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "status IN ('created', 'paid', 'received', 'final', 'cancelled', 'refunded')",
            name=op.f("ck_orders_status"),
        ),
        sa.PrimaryKeyConstraint("order_id", name=op.f("pk_orders")),
    )
    op.create_index(op.f("ix_orders_shop_id_created_at"), "orders", ["shop_id", "created_at"])
    op.create_index(op.f("ix_orders_status"), "orders", ["status"])
    op.create_table(
        "promoter_bases",
        sa.Column("base_id", sa.String(length=64), nullable=False),
        sa.Column("shop_id", sa.String(length=64), nullable=True),
        sa.Column("name", sa.String(length=200), server_default="", nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["shop_id"], ["shops.shop_id"], name=op.f("fk_promoter_bases_shop_id_shops")
        ),
        sa.PrimaryKeyConstraint("base_id", name=op.f("pk_promoter_bases")),
    )
    op.create_index(op.f("ix_promoter_bases_shop_id"), "promoter_bases", ["shop_id"])
    op.create_table(
        "shop_cps_periods",
        sa.Column("shop_id", sa.String(length=64), nullable=False),
        sa.Column("joined_at", sa.BigInteger(), nullable=False),
        sa.Column("exited_at", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "exited_at IS NULL OR exited_at >= joined_at",
            name=op.f("ck_shop_cps_periods_exit_after_join"),
        ),
        sa.ForeignKeyConstraint(
            ["shop_id"], ["shops.shop_id"], name=op.f("fk_shop_cps_periods_shop_id_shops")
        ),
        sa.PrimaryKeyConstraint("shop_id", "joined_at", name=op.f("pk_shop_cps_periods")),
    )
    op.create_table(
        "order_items",
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("item_id", sa.String(length=64), nullable=False),
        sa.Column("product_id", sa.String(length=64), nullable=False),
        sa.Column("category_id", sa.String(length=64), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("paid_amount", sa.BigInteger(), nullable=False),
        sa.Column("refunded_amount", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("refund_pending_amount", sa.BigInteger(), server_default="0", nullable=False),
        sa.CheckConstraint(
            "refunded_amount + refund_pending_amount <= paid_amount",
            name=op.f("ck_order_items_refunds_within_paid"),
        ),
        sa.PrimaryKeyConstraint("order_id", "item_id", name=op.f("pk_order_items")),
    )
    op.create_table(
        "promoter_base_members",
        sa.Column("base_id", sa.String(length=64), nullable=False),
        sa.Column("promoter_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["base_id"],
            ["promoter_bases.base_id"],
            name=op.f("fk_promoter_base_members_base_id_promoter_bases"),
        ),
        sa.ForeignKeyConstraint(
            ["promoter_id"],
            ["promoters.promoter_id"],
            name=op.f("fk_promoter_base_members_promoter_id_promoters"),
        ),
        sa.PrimaryKeyConstraint("base_id", "promoter_id", name=op.f("pk_promoter_base_members")),
    )
    op.create_index(
        op.f("ix_promoter_base_members_promoter_id"), "promoter_base_members", ["promoter_id"]
    )
    op.create_table(
        "order_refunds",
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("refund_id", sa.String(length=64), nullable=False),
        sa.Column("item_id", sa.String(length=64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("requested_at", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'completed', 'rejected')", name=op.f("ck_order_refunds_status")
        ),
        sa.PrimaryKeyConstraint("order_id", "refund_id", name=op.f("pk_order_refunds")),
    )


def downgrade() -> None:
    # Dependents first; dropping a table drops its indexes.
    for table in (
        "order_refunds", "promoter_base_members", "order_items", "shop_cps_periods",
        "promoter_bases", "orders", "channel_authorisations", "shops", "promoters", "outbox",
        "dead_letters", "channels", "attribution_pending", "attribution_decisions",
    ):
        op.drop_table(table)
