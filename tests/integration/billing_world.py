"""A small billing world in a real ledger database: master data, rates, paid orders.

    world = BillingWorld(engine)          # shop S1 in CPS, channel C1, promoters P1, P2
    world.standard_rates()                # SPEC 9: 20 % generic, platform 10 %, channel 5 %
    world.paid_order("O1", [("I1", 10_000)], promoter="P1")   # decided cps, paid at DAY0
    world.receive("O1", at_ms=...); world.charge("O1"); world.refund("O1", "I1", 5_000)
    summary = world.run(days=16)          # cps-billing run as of DAY0 + 16 days

Orders are written straight into ``orders``/``order_items``/``attribution_decisions``
the way order sync and the attribution service leave them (those services have their
own tests); charges go through ``billing_batch.charges`` like the charge service.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy
from sqlalchemy import Engine

from billing_batch import charges, master_data
from billing_batch.reconcile import Report, reconcile
from billing_batch.run import RunOptions, RunSummary, participant_balances, run_billing
from billing_batch.schedule import ScheduleMode, ScheduleRule
from contracts.charges import ChargeResult, ChargeStatus
from ledger_db import master_data as ledger_master
from ledger_db import schema

DAY_MS = 86_400_000
DAY0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class BillingWorld:
    def __init__(self, engine: Engine, *, promoters: Sequence[str] = ("P1", "P2")) -> None:
        self.engine = engine
        created = DAY0 - 30 * DAY_MS
        with engine.begin() as conn:
            ledger_master.add_shop(conn, "S1", now_ms=created)
            ledger_master.join_cps(conn, "S1", created)
            for channel in ("C1", "C2"):
                ledger_master.add_channel(conn, channel, now_ms=created)
            for promoter in promoters:
                ledger_master.add_promoter(conn, promoter, now_ms=created)

    # -- master data -----------------------------------------------------------------------

    def standard_rates(self, *, rate_bp: int = 2000, platform_bp: int = 1000,
                       channel_fee_bp: int = 500) -> None:
        """SPEC 9's worked example: generic product rate, platform share, channel fee."""
        start = DAY0 - 10 * DAY_MS
        with self.engine.begin() as conn:
            master_data.add_rate_rule(conn, level="shop_generic", shop_id="S1",
                                      rate_bp=rate_bp, valid_from_ms=start,
                                      now_ms=start, rule_id="R-generic")
            master_data.add_fee_setting(conn, kind="platform_share", bp=platform_bp,
                                        valid_from_ms=start, now_ms=start, rule_id="F-platform")
            for channel in ("C1", "C2"):
                master_data.add_fee_setting(conn, kind="channel_fee", bp=channel_fee_bp,
                                            channel_id=channel, valid_from_ms=start,
                                            now_ms=start, rule_id=f"F-{channel}")
                master_data.add_channel_rate(conn, channel_id=channel, rate_bp=300,
                                             valid_from_ms=start, now_ms=start,
                                             rule_id=f"CR-{channel}")

    def schedule(self, channel: str, participant: str, *, days: int | None = None,
                 monthly: bool = False) -> None:
        rule = ScheduleRule(channel, participant,
                            ScheduleMode.MONTHLY if monthly else ScheduleMode.DELAY,
                            15 if days is None else days)
        with self.engine.begin() as conn:
            master_data.set_schedule(conn, rule, now_ms=now_ms())

    # -- orders ----------------------------------------------------------------------------

    def paid_order(self, order_id: str, items: Sequence[tuple[str, int]], *,
                   promoter: str | None = "P1", channel: str = "C1",
                   attribution: str | None = None, paid_at_ms: int = DAY0) -> None:
        kind = attribution or ("cps" if promoter else "none")
        with self.engine.begin() as conn:
            conn.execute(schema.orders.insert().values(
                order_id=order_id, shop_id="S1", status="paid", channel_id=channel,
                created_at=paid_at_ms - 60_000, paid_at=paid_at_ms, event_ts=paid_at_ms,
                updated_at=paid_at_ms))
            conn.execute(schema.order_items.insert(), [
                {"order_id": order_id, "item_id": item_id, "product_id": f"prod-{item_id}",
                 "category_id": "cat-1", "quantity": 1, "paid_amount": paid}
                for item_id, paid in items])
            if attribution != "undecided":
                conn.execute(schema.attribution_decisions.insert().values(
                    order_id=order_id, attribution_type=kind,
                    promoter_id=promoter if kind == "cps" else None,
                    channel_id=channel if kind != "none" else None,
                    evidence={"cps": "click", "self_operated": "fanstype"}.get(kind, "none"),
                    reason="test", order_created_at=paid_at_ms - 60_000,
                    decided_at=paid_at_ms))

    def decide(self, order_id: str, promoter: str = "P1", channel: str = "C1") -> None:
        with self.engine.begin() as conn:
            conn.execute(schema.attribution_decisions.insert().values(
                order_id=order_id, attribution_type="cps", promoter_id=promoter,
                channel_id=channel, evidence="click", reason="test",
                order_created_at=DAY0, decided_at=DAY0))

    def receive(self, order_id: str, *, at_ms: int = DAY0 + DAY_MS,
                final_at_ms: int | None = None) -> None:
        values: dict[str, Any] = {"status": "final" if final_at_ms else "received",
                                  "received_at": at_ms}
        if final_at_ms is not None:
            values["final_at"] = final_at_ms
        with self.engine.begin() as conn:
            conn.execute(schema.orders.update().where(schema.orders.c.order_id == order_id)
                         .values(**values))

    def refund(self, order_id: str, item_id: str, amount_minor: int, *,
               pending: bool = False) -> None:
        items = schema.order_items
        column = items.c.refund_pending_amount if pending else items.c.refunded_amount
        with self.engine.begin() as conn:
            conn.execute(items.update().where(items.c.order_id == order_id,
                                              items.c.item_id == item_id)
                         .values({column: column + amount_minor}))

    def complete_pending_refund(self, order_id: str, item_id: str) -> None:
        items = schema.order_items
        with self.engine.begin() as conn:
            conn.execute(items.update().where(items.c.order_id == order_id,
                                              items.c.item_id == item_id)
                         .values(refunded_amount=items.c.refunded_amount
                                 + items.c.refund_pending_amount,
                                 refund_pending_amount=0))

    def charge(self, order_id: str, status: str = "charged") -> None:
        with self.engine.begin() as conn:
            charge = charges.load_charges(conn, [order_id])[order_id]
            charges.apply_results(conn, [ChargeResult(
                charge_id=charge.charge_id, order_id=order_id, status=ChargeStatus(status),
                reason="" if status == "charged" else "declined",
                processed_at=now_ms())], now_ms(), max_attempts=1)

    # -- runs and what they wrote ---------------------------------------------------------

    def run(self, days: float, **options: Any) -> RunSummary:
        return run_billing(self.engine, RunOptions(as_of_ms=int(DAY0 + days * DAY_MS),
                                                   **options))

    def reconcile(self) -> Report:
        with self.engine.connect() as conn:
            return reconcile(conn, "after", started_ms=now_ms() + 1,
                             as_of_ms=DAY0 + 10_000 * DAY_MS)

    def transfers(self, order_id: str | None = None) -> list[dict[str, Any]]:
        table = schema.ledger_transfers
        query = sqlalchemy.select(table).order_by(table.c.seq, table.c.code,
                                                  table.c.credit_account_id)
        if order_id is not None:
            query = query.where(table.c.order_id == order_id)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def settled(self) -> dict[str, int]:
        """Net settled money per participant account (settle + adjust - clawback)."""
        out: dict[str, int] = {}
        for transfer in self.transfers():
            code, amount = transfer["code"], transfer["amount"]
            if code in ("settle", "adjust"):
                account = transfer["credit_account_id"]
                out[account] = out.get(account, 0) + amount
            elif code == "clawback":
                account = transfer["debit_account_id"]
                out[account] = out.get(account, 0) - amount
        return out

    def balances(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return participant_balances(conn)

    def payouts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(sqlalchemy.select(schema.payouts.c.account_id,
                                                  schema.payouts.c.amount)).all()
        out: dict[str, int] = {}
        for account, amount in rows:
            out[account] = out.get(account, 0) + amount
        return out

    def line(self, order_id: str, item_id: str) -> dict[str, Any]:
        table = schema.commission_lines
        with self.engine.connect() as conn:
            return dict(conn.execute(sqlalchemy.select(table).where(
                table.c.order_id == order_id, table.c.item_id == item_id)).one()._mapping)
