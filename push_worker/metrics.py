"""Prometheus metrics of the push worker, on ``CPS_PUSH_METRICS_PORT`` (9467; 0 = none).

* ``cps_push_deliveries_total{outcome}``: attempts by what they did (``policy.Verdict``:
  delivered, retry, dead, gone);
* ``cps_push_latency_seconds``: one POST, request to answer (buckets 5 ms .. 15 s);
* ``cps_push_backlog{status}``: pending and dead deliveries, and
  ``cps_push_endpoints{status}``, read from the ledger at scrape time (two ``GROUP BY``).

Labels are bounded sets, never endpoint or event ids.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from ledger_db import schema

REGISTRY = CollectorRegistry(auto_describe=True)
deliveries = Counter("cps_push_deliveries_total", "Delivery attempts, by outcome.",
                     ["outcome"], registry=REGISTRY)
latency = Histogram("cps_push_latency_seconds", "One webhook POST, request to answer.",
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15),
                    registry=REGISTRY)


class LedgerCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        backlog = GaugeMetricFamily("cps_push_backlog", "Deliveries not yet delivered.",
                                    labels=["status"])
        endpoints = GaugeMetricFamily("cps_push_endpoints", "Webhook endpoints, by status.",
                                      labels=["status"])
        d, e = schema.webhook_deliveries, schema.webhook_endpoints
        try:
            with self._engine.connect() as conn:
                counts: dict[str, int] = dict(conn.execute(select(d.c.status, func.count())
                                           .where(d.c.status != "delivered")
                                           .group_by(d.c.status)).all())
                states: dict[str, int] = dict(conn.execute(select(e.c.status, func.count())
                                           .group_by(e.c.status)).all())
        except SQLAlchemyError:
            return
        for status in ("pending", "dead"):
            backlog.add_metric([status], float(counts.get(status, 0)))
        for status in ("active", "disabled"):
            endpoints.add_metric([status], float(states.get(status, 0)))
        yield backlog
        yield endpoints
