"""Prometheus metrics of the billing batch and the charge service.

Two kinds of process, two ways to be scraped:

* ``cps-billing run`` is a batch job: at its end (done or failed) it writes its figures
  in the text exposition format to ``--metrics-file`` / ``CPS_BILLING_METRICS_FILE``
  (atomically: a temporary file renamed over it), the file node_exporter's textfile
  collector serves.  ``cps_billing_last_run_timestamp_seconds`` lets an alert catch a
  run that did not happen; ``cps_billing_last_run_success`` one that failed;
  ``cps_billing_reconciliation_ok`` books that do not balance.
* ``cps-billing charges serve`` is long-running and serves ``/metrics`` on
  ``CPS_CHARGE_METRICS_PORT`` (default 9466; 0 = off): results applied by effect,
  dead letters, charges by status (read from the ledger at scrape time: one indexed
  ``GROUP BY``) and the outbox backlog.

Label values are bounded sets (transfer codes, effects, statuses), never ids.  The
alerts (``ops/prometheus/billing-alerts.yml``) query exactly these names.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, write_to_textfile
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from ledger_db import outbox, schema

RUN_AMOUNT_CODES = ("freeze", "unfreeze", "settle", "clawback", "adjust")


def write_run_metrics(path: str | Path, *, summary: dict[str, object] | None, success: bool,
                      reconciliation_ok: bool | None, duration_s: float) -> None:
    """The last run's figures as a textfile-collector file (``summary``: RunSummary
    fields, None when the run stopped before it had any)."""
    registry = CollectorRegistry()

    def gauge(name: str, documentation: str, value: float) -> None:
        Gauge(name, documentation, registry=registry).set(value)

    gauge("cps_billing_last_run_timestamp_seconds", "When the last billing run ended.",
          time.time())
    gauge("cps_billing_last_run_success", "1 if the last billing run finished, else 0.",
          1 if success else 0)
    gauge("cps_billing_last_run_duration_seconds", "How long the last billing run took.",
          duration_s)
    if reconciliation_ok is not None:
        gauge("cps_billing_reconciliation_ok",
              "1 if the last reconciliation found the books balanced, else 0.",
              1 if reconciliation_ok else 0)
    if summary is not None:
        for field, documentation in (
                ("orders", "Orders the last run looked at."),
                ("lines_accrued", "Lines the last run accrued."),
                ("lines_reallocated", "Lines the last run re-allocated after refunds."),
                ("awaiting_attribution", "Paid orders still without an attribution decision."),
                ("charges_requested", "Charges the last run requested."),
                ("payouts", "Payouts the last run wrote."),
                ("payout_minor", "Money the last run paid out, minor units."),
                ("negative_balances", "Participants left with a negative balance.")):
            gauge(f"cps_billing_last_run_{field}", documentation,
                  float(summary.get(field, 0)))  # type: ignore[arg-type]
        amounts = Gauge("cps_billing_last_run_amount_minor",
                        "Money the last run moved, by transfer code, minor units.", ["code"],
                        registry=registry)
        moved = summary.get("amounts") or {}
        assert isinstance(moved, dict)
        for code in RUN_AMOUNT_CODES:
            amounts.labels(code).set(float(moved.get(code, 0)))
        held = Gauge("cps_billing_last_run_held_orders",
                     "Orders whose settlement waits, by reason.", ["reason"],
                     registry=registry)
        held_counts = summary.get("held") or {}
        assert isinstance(held_counts, dict)
        for reason in ("charge", "refund in progress"):
            held.labels(reason).set(float(held_counts.get(reason, 0)))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)


# -- the charge service ------------------------------------------------------------------

CHARGE_REGISTRY = CollectorRegistry(auto_describe=True)
charge_results = Counter(
    "cps_charge_results_total", "Charge results consumed, by what they did (charges.Effect).",
    ["effect"], registry=CHARGE_REGISTRY)
charge_dead_letters = Counter(
    "cps_charge_dead_letters_total", "Unreadable charge results set aside with their bytes.",
    registry=CHARGE_REGISTRY)


class LedgerCollector(Collector):
    """Charges by status and the outbox backlog, read from the ledger at scrape time."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        statuses = GaugeMetricFamily("cps_charges", "Charges in the ledger, by status.",
                                     labels=["status"])
        backlog = GaugeMetricFamily("cps_outbox_backlog",
                                    "Outbox records not yet acknowledged by Kafka.")
        table = schema.billing_charges
        try:
            with self._engine.connect() as conn:
                counts = {status: count for status, count in conn.execute(
                    select(table.c.status, func.count()).group_by(table.c.status))}
            pending = outbox.backlog(self._engine)
        except SQLAlchemyError:
            return  # the scrape shows the gap; the service logs the outage
        for status in ("pending", "charged", "failed"):
            statuses.add_metric([status], float(counts.get(status, 0)))
        backlog.add_metric([], float(pending))
        yield statuses
        yield backlog
