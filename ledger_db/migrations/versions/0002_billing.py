"""Billing: rates, fees, schedules, commission lines, charges, the two-phase ledger, runs and
payouts (see ledger_db.schema).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 18:06:57
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "billing_charges",
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("charge_id", sa.String(length=80), nullable=False),
        sa.Column("shop_id", sa.String(length=64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="1", nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("requested_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'charged', 'failed')", name=op.f("ck_billing_charges_status")
        ),
        sa.CheckConstraint("amount >= 0", name=op.f("ck_billing_charges_amount")),
        sa.PrimaryKeyConstraint("order_id", name=op.f("pk_billing_charges")),
        sa.UniqueConstraint("charge_id", name=op.f("uq_billing_charges_charge_id")),
    )
    op.create_index(op.f("ix_billing_charges_status"), "billing_charges", ["status"], unique=False)

    op.create_table(
        "billing_runs",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("as_of", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("phase", sa.String(length=16), server_default="accrue", nullable=False),
        sa.Column("cursor_order_id", sa.String(length=64), nullable=True),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "status IN ('running', 'finished', 'failed')", name=op.f("ck_billing_runs_status")
        ),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_billing_runs")),
    )
    op.create_index(op.f("ix_billing_runs_as_of"), "billing_runs", ["as_of"], unique=False)

    op.create_table(
        "channel_rates",
        sa.Column("rule_id", sa.String(length=64), nullable=False),
        sa.Column("channel_id", sa.String(length=64), nullable=False),
        sa.Column("category_id", sa.String(length=64), nullable=True),
        sa.Column("rate_bp", sa.Integer(), nullable=False),
        sa.Column("valid_from", sa.BigInteger(), nullable=False),
        sa.Column("valid_to", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("supersedes", sa.String(length=64), nullable=True),
        sa.CheckConstraint("rate_bp BETWEEN 0 AND 10000", name=op.f("ck_channel_rates_rate_bp")),
        sa.CheckConstraint(
            "valid_to IS NULL OR valid_to >= valid_from", name=op.f("ck_channel_rates_validity")
        ),
        sa.PrimaryKeyConstraint("rule_id", name=op.f("pk_channel_rates")),
    )
    op.create_index(
        op.f("ix_channel_rates_channel_id"), "channel_rates", ["channel_id"], unique=False
    )

    op.create_table(
        "commission_lines",
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("item_id", sa.String(length=64), nullable=False),
        sa.Column("shop_id", sa.String(length=64), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=200), server_default="", nullable=False),
        sa.Column("promoter_id", sa.String(length=64), nullable=True),
        sa.Column("channel_id", sa.String(length=64), nullable=True),
        sa.Column("rule_id", sa.String(length=64), nullable=True),
        sa.Column("rate_level", sa.String(length=24), nullable=True),
        sa.Column("rate_bp", sa.Integer(), nullable=True),
        sa.Column("activity_id", sa.String(length=64), nullable=True),
        sa.Column("leader_id", sa.String(length=64), nullable=True),
        sa.Column("leader_rate_bp", sa.Integer(), nullable=True),
        sa.Column("platform_share_bp", sa.Integer(), nullable=True),
        sa.Column("channel_fee_bp", sa.Integer(), nullable=True),
        sa.Column("fans_share_bp", sa.Integer(), nullable=True),
        sa.Column("platform_share_rule_id", sa.String(length=64), nullable=True),
        sa.Column("channel_fee_rule_id", sa.String(length=64), nullable=True),
        sa.Column("fans_share_rule_id", sa.String(length=64), nullable=True),
        sa.Column("paid_amount", sa.BigInteger(), nullable=False),
        sa.Column("accrued_paid_amount", sa.BigInteger(), nullable=False),
        sa.Column("commission_amount", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("paid_at", sa.BigInteger(), nullable=False),
        sa.Column("ledger_state", sa.String(length=8), server_default="open", nullable=False),
        sa.Column("accrued_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.CheckConstraint(
            "ledger_state IN ('open', 'partial', 'settled', 'none')",
            name=op.f("ck_commission_lines_ledger_state"),
        ),
        sa.CheckConstraint(
            "mode IN ('cps', 'self_operated', 'none')", name=op.f("ck_commission_lines_mode")
        ),
        sa.CheckConstraint(
            "status IN ('accrued', 'no_commission')", name=op.f("ck_commission_lines_status")
        ),
        sa.CheckConstraint(
            "accrued_paid_amount BETWEEN 0 AND paid_amount",
            name=op.f("ck_commission_lines_accrued_paid"),
        ),
        sa.CheckConstraint("commission_amount >= 0", name=op.f("ck_commission_lines_commission")),
        sa.PrimaryKeyConstraint("order_id", "item_id", name=op.f("pk_commission_lines")),
    )
    op.create_index(
        op.f("ix_commission_lines_promoter_id"), "commission_lines", ["promoter_id"], unique=False
    )

    op.create_table(
        "fee_settings",
        sa.Column("rule_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("channel_id", sa.String(length=64), nullable=True),
        sa.Column("bp", sa.Integer(), nullable=False),
        sa.Column("valid_from", sa.BigInteger(), nullable=False),
        sa.Column("valid_to", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("supersedes", sa.String(length=64), nullable=True),
        sa.CheckConstraint(
            "kind IN ('platform_share', 'channel_fee', 'fans_share')",
            name=op.f("ck_fee_settings_kind"),
        ),
        sa.CheckConstraint("bp BETWEEN 0 AND 10000", name=op.f("ck_fee_settings_bp")),
        sa.CheckConstraint(
            "valid_to IS NULL OR valid_to >= valid_from", name=op.f("ck_fee_settings_validity")
        ),
        sa.PrimaryKeyConstraint("rule_id", name=op.f("pk_fee_settings")),
    )
    op.create_table(
        "ledger_accounts",
        sa.Column("account_id", sa.String(length=80), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("owner_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "kind IN ('merchant', 'frozen', 'promoter', 'channel', 'platform', 'group_leader', "
            "'fans', 'payout')",
            name=op.f("ck_ledger_accounts_kind"),
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_ledger_accounts")),
    )
    op.create_table(
        "ledger_transfers",
        sa.Column("transfer_id", sa.Uuid(), nullable=False),
        sa.Column("debit_account_id", sa.String(length=80), nullable=False),
        sa.Column("credit_account_id", sa.String(length=80), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("pending_id", sa.Uuid(), nullable=True),
        sa.Column("flags", sa.String(length=8), nullable=False),
        sa.Column("code", sa.String(length=16), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=True),
        sa.Column("item_id", sa.String(length=64), nullable=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("as_of", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "(flags IN ('post', 'void')) = (pending_id IS NOT NULL)",
            name=op.f("ck_ledger_transfers_pending_id"),
        ),
        sa.CheckConstraint(
            "code IN ('freeze', 'commission', 'settle', 'void', 'unfreeze', 'clawback', 'adjust', "
            "'payout')",
            name=op.f("ck_ledger_transfers_code"),
        ),
        sa.CheckConstraint(
            "flags IN ('posted', 'pending', 'post', 'void')", name=op.f("ck_ledger_transfers_flags")
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_ledger_transfers_amount")),
        sa.CheckConstraint(
            "debit_account_id <> credit_account_id",
            name=op.f("ck_ledger_transfers_accounts_differ"),
        ),
        sa.PrimaryKeyConstraint("transfer_id", name=op.f("pk_ledger_transfers")),
        sa.UniqueConstraint("pending_id", name=op.f("uq_ledger_transfers_pending_id")),
    )
    op.create_index(
        op.f("ix_ledger_transfers_order_id"), "ledger_transfers", ["order_id"], unique=False
    )

    op.create_table(
        "payouts",
        sa.Column("payout_id", sa.String(length=145), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=80), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("transfer_id", sa.Uuid(), nullable=False),
        sa.Column("as_of", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_payouts_amount")),
        sa.PrimaryKeyConstraint("payout_id", name=op.f("pk_payouts")),
        sa.UniqueConstraint("transfer_id", name=op.f("uq_payouts_transfer_id")),
    )
    op.create_index(op.f("ix_payouts_account_id"), "payouts", ["account_id"], unique=False)
    op.create_index(op.f("ix_payouts_run_id"), "payouts", ["run_id"], unique=False)

    op.create_table(
        "rate_rules",
        sa.Column("rule_id", sa.String(length=64), nullable=False),
        sa.Column("level", sa.String(length=24), nullable=False),
        sa.Column("shop_id", sa.String(length=64), nullable=False),
        sa.Column("product_id", sa.String(length=64), nullable=True),
        sa.Column("promoter_id", sa.String(length=64), nullable=True),
        sa.Column("base_id", sa.String(length=64), nullable=True),
        sa.Column("activity_id", sa.String(length=64), nullable=True),
        sa.Column("category_id", sa.String(length=64), nullable=True),
        sa.Column("rate_bp", sa.Integer(), nullable=False),
        sa.Column("leader_rate_bp", sa.Integer(), nullable=True),
        sa.Column("valid_from", sa.BigInteger(), nullable=False),
        sa.Column("valid_to", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("supersedes", sa.String(length=64), nullable=True),
        sa.CheckConstraint(
            "level IN ('targeted_product', 'targeted_base', 'group_leader', 'generic_product', "
            "'shop_category', 'shop_generic')",
            name=op.f("ck_rate_rules_level"),
        ),
        sa.CheckConstraint(
            "leader_rate_bp IS NULL OR leader_rate_bp BETWEEN 0 AND 10000",
            name=op.f("ck_rate_rules_leader_rate_bp"),
        ),
        sa.CheckConstraint("rate_bp BETWEEN 0 AND 10000", name=op.f("ck_rate_rules_rate_bp")),
        sa.CheckConstraint(
            "valid_to IS NULL OR valid_to >= valid_from", name=op.f("ck_rate_rules_validity")
        ),
        sa.PrimaryKeyConstraint("rule_id", name=op.f("pk_rate_rules")),
    )
    op.create_index(op.f("ix_rate_rules_shop_id"), "rate_rules", ["shop_id"], unique=False)

    op.create_table(
        "settlement_schedules",
        sa.Column("channel_id", sa.String(length=64), nullable=False),
        sa.Column("participant_kind", sa.String(length=16), nullable=False),
        sa.Column("mode", sa.String(length=8), nullable=False),
        sa.Column("delay_days", sa.Integer(), server_default="15", nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "mode IN ('delay', 'monthly')", name=op.f("ck_settlement_schedules_mode")
        ),
        sa.CheckConstraint("delay_days >= 0", name=op.f("ck_settlement_schedules_delay_days")),
        sa.PrimaryKeyConstraint(
            "channel_id", "participant_kind", name=op.f("pk_settlement_schedules")
        ),
    )
    op.create_table(
        "group_leader_activities",
        sa.Column("activity_id", sa.String(length=64), nullable=False),
        sa.Column("shop_id", sa.String(length=64), nullable=False),
        sa.Column("leader_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), server_default="", nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["leader_id"],
            ["promoters.promoter_id"],
            name=op.f("fk_group_leader_activities_leader_id_promoters"),
        ),
        sa.ForeignKeyConstraint(
            ["shop_id"], ["shops.shop_id"], name=op.f("fk_group_leader_activities_shop_id_shops")
        ),
        sa.PrimaryKeyConstraint("activity_id", name=op.f("pk_group_leader_activities")),
    )
    op.create_index(
        op.f("ix_group_leader_activities_shop_id"),
        "group_leader_activities",
        ["shop_id"],
        unique=False,
    )

    op.create_table(
        "group_leader_members",
        sa.Column("activity_id", sa.String(length=64), nullable=False),
        sa.Column("promoter_id", sa.String(length=64), nullable=False),
        sa.Column("joined_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["activity_id"],
            ["group_leader_activities.activity_id"],
            name=op.f("fk_group_leader_members_activity_id_group_leader_activities"),
        ),
        sa.ForeignKeyConstraint(
            ["promoter_id"],
            ["promoters.promoter_id"],
            name=op.f("fk_group_leader_members_promoter_id_promoters"),
        ),
        sa.PrimaryKeyConstraint("activity_id", "promoter_id", name=op.f("pk_group_leader_members")),
    )
    op.create_index(
        op.f("ix_group_leader_members_promoter_id"),
        "group_leader_members",
        ["promoter_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_group_leader_members_promoter_id"), table_name="group_leader_members")

    op.drop_table("group_leader_members")
    op.drop_index(op.f("ix_group_leader_activities_shop_id"), table_name="group_leader_activities")

    op.drop_table("group_leader_activities")
    op.drop_table("settlement_schedules")
    op.drop_index(op.f("ix_rate_rules_shop_id"), table_name="rate_rules")

    op.drop_table("rate_rules")
    op.drop_index(op.f("ix_payouts_run_id"), table_name="payouts")
    op.drop_index(op.f("ix_payouts_account_id"), table_name="payouts")

    op.drop_table("payouts")
    op.drop_index(op.f("ix_ledger_transfers_order_id"), table_name="ledger_transfers")

    op.drop_table("ledger_transfers")
    op.drop_table("ledger_accounts")
    op.drop_table("fee_settings")
    op.drop_index(op.f("ix_commission_lines_promoter_id"), table_name="commission_lines")

    op.drop_table("commission_lines")
    op.drop_index(op.f("ix_channel_rates_channel_id"), table_name="channel_rates")

    op.drop_table("channel_rates")
    op.drop_index(op.f("ix_billing_runs_as_of"), table_name="billing_runs")

    op.drop_table("billing_runs")
    op.drop_index(op.f("ix_billing_charges_status"), table_name="billing_charges")

    op.drop_table("billing_charges")
