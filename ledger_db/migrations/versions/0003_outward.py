"""Order center outward: merchants and API keys, positions and links, the product
catalogue and channel prohibitions, daily click counts, webhooks (see ledger_db.schema).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 19:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("owner_kind", sa.String(length=16), nullable=False),
        sa.Column("owner_id", sa.String(length=64), nullable=False),
        sa.Column("key_hash", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=200), server_default="", nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("last_used_at", sa.BigInteger(), nullable=True),
        sa.Column("revoked_at", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "owner_kind IN ('promoter', 'merchant')", name=op.f("ck_api_keys_owner_kind")
        ),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_index(
        op.f("ix_api_keys_owner_kind_owner_id"),
        "api_keys",
        ["owner_kind", "owner_id"],
        unique=False,
    )

    op.create_table(
        "channel_prohibited_categories",
        sa.Column("channel_id", sa.String(length=64), nullable=False),
        sa.Column("category_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "channel_id", "category_id", name=op.f("pk_channel_prohibited_categories")
        ),
    )
    op.create_table(
        "channel_prohibited_products",
        sa.Column("channel_id", sa.String(length=64), nullable=False),
        sa.Column("shop_id", sa.String(length=64), nullable=False),
        sa.Column("product_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "channel_id", "shop_id", "product_id", name=op.f("pk_channel_prohibited_products")
        ),
    )
    op.create_table(
        "click_counts_daily",
        sa.Column("promoter_id", sa.String(length=64), nullable=False),
        sa.Column("channel_id", sa.String(length=64), nullable=False),
        sa.Column("position_id", sa.String(length=64), nullable=False),
        sa.Column("day", sa.BigInteger(), nullable=False),
        sa.Column("clicks", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint(
            "promoter_id", "channel_id", "position_id", "day", name=op.f("pk_click_counts_daily")
        ),
    )
    op.create_table(
        "merchants",
        sa.Column("merchant_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), server_default="", nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("merchant_id", name=op.f("pk_merchants")),
    )
    op.create_table(
        "products",
        sa.Column("shop_id", sa.String(length=64), nullable=False),
        sa.Column("product_id", sa.String(length=64), nullable=False),
        sa.Column("category_id", sa.String(length=64), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("price_amount", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="listed", nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("status IN ('listed', 'delisted')", name=op.f("ck_products_status")),
        sa.CheckConstraint("price_amount >= 0", name=op.f("ck_products_price_amount")),
        sa.PrimaryKeyConstraint("shop_id", "product_id", name=op.f("pk_products")),
    )
    op.create_index(op.f("ix_products_category_id"), "products", ["category_id"], unique=False)

    op.create_table(
        "promoter_links",
        sa.Column("link_id", sa.String(length=64), nullable=False),
        sa.Column("promoter_id", sa.String(length=64), nullable=False),
        sa.Column("channel_id", sa.String(length=64), nullable=False),
        sa.Column("position_id", sa.String(length=64), nullable=True),
        sa.Column("shop_id", sa.String(length=64), nullable=True),
        sa.Column("product_id", sa.String(length=64), nullable=True),
        sa.Column("target", sa.String(length=2048), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("link_id", name=op.f("pk_promoter_links")),
    )
    op.create_index(
        op.f("ix_promoter_links_promoter_id_created_at"),
        "promoter_links",
        ["promoter_id", "created_at"],
        unique=False,
    )

    op.create_table(
        "webhook_attempts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("delivery_id", sa.BigInteger(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
    )
    op.create_index(
        op.f("ix_webhook_attempts_delivery_id"), "webhook_attempts", ["delivery_id"], unique=False
    )

    op.create_table(
        "webhook_deliveries",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("event_id", sa.String(length=80), nullable=False),
        sa.Column("endpoint_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger(), nullable=False),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        sa.Column("delivered_at", sa.BigInteger(), nullable=True),
        sa.Column("dead_at", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'dead')", name=op.f("ck_webhook_deliveries_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
    )
    op.create_index(
        op.f("ix_webhook_deliveries_endpoint_id_status_id"),
        "webhook_deliveries",
        ["endpoint_id", "status", "id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_webhook_deliveries_event_id_endpoint_id"),
        "webhook_deliveries",
        ["event_id", "endpoint_id"],
        unique=True,
    )
    op.create_index(
        op.f("ix_webhook_deliveries_status_next_attempt_at"),
        "webhook_deliveries",
        ["status", "next_attempt_at"],
        unique=False,
    )

    op.create_table(
        "webhook_endpoints",
        sa.Column("endpoint_id", sa.String(length=64), nullable=False),
        sa.Column("owner_kind", sa.String(length=16), nullable=False),
        sa.Column("owner_id", sa.String(length=64), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="active", nullable=False),
        sa.Column("disabled_reason", sa.String(length=200), nullable=True),
        sa.Column("disabled_at", sa.BigInteger(), nullable=True),
        sa.Column("failing_since", sa.BigInteger(), nullable=True),
        sa.Column("max_in_flight", sa.Integer(), server_default="4", nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "owner_kind IN ('promoter', 'channel')", name=op.f("ck_webhook_endpoints_owner_kind")
        ),
        sa.CheckConstraint(
            "status IN ('active', 'disabled')", name=op.f("ck_webhook_endpoints_status")
        ),
        sa.PrimaryKeyConstraint("endpoint_id", name=op.f("pk_webhook_endpoints")),
    )
    op.create_index(
        op.f("ix_webhook_endpoints_owner_kind_owner_id"),
        "webhook_endpoints",
        ["owner_kind", "owner_id"],
        unique=False,
    )

    op.create_table(
        "webhook_events",
        sa.Column("event_id", sa.String(length=80), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=True),
        sa.Column("promoter_id", sa.String(length=64), nullable=True),
        sa.Column("channel_id", sa.String(length=64), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("occurred_at", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_webhook_events")),
    )
    op.create_index(
        op.f("ix_webhook_events_order_id"), "webhook_events", ["order_id"], unique=False
    )

    op.create_table(
        "merchant_shops",
        sa.Column("merchant_id", sa.String(length=64), nullable=False),
        sa.Column("shop_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchants.merchant_id"],
            name=op.f("fk_merchant_shops_merchant_id_merchants"),
        ),
        sa.ForeignKeyConstraint(
            ["shop_id"], ["shops.shop_id"], name=op.f("fk_merchant_shops_shop_id_shops")
        ),
        sa.PrimaryKeyConstraint("merchant_id", "shop_id", name=op.f("pk_merchant_shops")),
    )
    op.create_index(op.f("ix_merchant_shops_shop_id"), "merchant_shops", ["shop_id"], unique=False)

    op.create_table(
        "positions",
        sa.Column("position_id", sa.String(length=64), nullable=False),
        sa.Column("promoter_id", sa.String(length=64), nullable=False),
        sa.Column("channel_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), server_default="", nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["channel_id"], ["channels.channel_id"], name=op.f("fk_positions_channel_id_channels")
        ),
        sa.ForeignKeyConstraint(
            ["promoter_id"],
            ["promoters.promoter_id"],
            name=op.f("fk_positions_promoter_id_promoters"),
        ),
        sa.PrimaryKeyConstraint("position_id", name=op.f("pk_positions")),
    )
    op.create_index(op.f("ix_positions_promoter_id"), "positions", ["promoter_id"], unique=False)

    op.create_table(
        "webhook_secrets",
        sa.Column("endpoint_id", sa.String(length=64), nullable=False),
        sa.Column("secret_id", sa.String(length=64), nullable=False),
        sa.Column("secret_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["webhook_endpoints.endpoint_id"],
            name=op.f("fk_webhook_secrets_endpoint_id_webhook_endpoints"),
        ),
        sa.PrimaryKeyConstraint("endpoint_id", "secret_id", name=op.f("pk_webhook_secrets")),
    )


def downgrade() -> None:
    op.drop_table("webhook_secrets")
    op.drop_index(op.f("ix_positions_promoter_id"), table_name="positions")

    op.drop_table("positions")
    op.drop_index(op.f("ix_merchant_shops_shop_id"), table_name="merchant_shops")

    op.drop_table("merchant_shops")
    op.drop_index(op.f("ix_webhook_events_order_id"), table_name="webhook_events")

    op.drop_table("webhook_events")
    op.drop_index(op.f("ix_webhook_endpoints_owner_kind_owner_id"), table_name="webhook_endpoints")

    op.drop_table("webhook_endpoints")
    op.drop_index(
        op.f("ix_webhook_deliveries_status_next_attempt_at"), table_name="webhook_deliveries"
    )
    op.drop_index(
        op.f("ix_webhook_deliveries_event_id_endpoint_id"), table_name="webhook_deliveries"
    )
    op.drop_index(
        op.f("ix_webhook_deliveries_endpoint_id_status_id"), table_name="webhook_deliveries"
    )

    op.drop_table("webhook_deliveries")
    op.drop_index(op.f("ix_webhook_attempts_delivery_id"), table_name="webhook_attempts")

    op.drop_table("webhook_attempts")
    op.drop_index(op.f("ix_promoter_links_promoter_id_created_at"), table_name="promoter_links")

    op.drop_table("promoter_links")
    op.drop_index(op.f("ix_products_category_id"), table_name="products")

    op.drop_table("products")
    op.drop_table("merchants")
    op.drop_table("click_counts_daily")
    op.drop_table("channel_prohibited_products")
    op.drop_table("channel_prohibited_categories")
    op.drop_index(op.f("ix_api_keys_owner_kind_owner_id"), table_name="api_keys")

    op.drop_table("api_keys")
