"""Prometheus metrics of the attribution service (``/metrics`` on its HTTP port).

Every worker process exports its own; Prometheus sums them (``sum by (...)``).
Label values are bounded sets (topics, decision types, rules, outcomes), never ids.
The dashboard (``ops/grafana/cps-attribution-dashboard.json``) and the alerts
(``ops/prometheus/attribution-alerts.yml``) query exactly these names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

# From a few milliseconds (decided on arrival) to the delayed-attribution horizon.
DELAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                 120.0, 300.0, 600.0, 1800.0, 3600.0)

consumer_lag = Gauge(
    "cps_attribution_consumer_lag_messages",
    "Messages between the committed position and the end of the log, per topic.",
    ["topic"], registry=REGISTRY)
messages = Counter(
    "cps_attribution_messages_total", "Messages consumed, per topic and outcome.",
    ["topic", "outcome"], registry=REGISTRY)
clicks_written = Counter(
    "cps_attribution_clicks_written_total",
    "Valid clicks written to the click store, per source (topic or fallback stream).",
    ["source"], registry=REGISTRY)
dead_letters = Counter(
    "cps_attribution_dead_letters_total",
    "Messages set aside with their raw bytes and a reason, per source.",
    ["source"], registry=REGISTRY)
decisions = Counter(
    "cps_attribution_decisions_total", "Attribution decisions, by type and deciding rule.",
    ["type", "rule"], registry=REGISTRY)
delay = Histogram(
    "cps_attribution_delay_seconds",
    "From the order's first message to its decision (delayed attribution included).",
    ["attempt"], buckets=DELAY_BUCKETS, registry=REGISTRY)
retries = Counter(
    "cps_attribution_retries_total", "Orders put back for a later look (no evidence yet).",
    registry=REGISTRY)
late_clicks = Counter(
    "cps_attribution_late_clicks_total",
    "CPS decisions whose click was found only on a later look (it arrived late).",
    registry=REGISTRY)
pending = Gauge(
    "cps_attribution_pending_orders", "Orders waiting for (delayed) attribution.",
    registry=REGISTRY)
outbox_backlog = Gauge(
    "cps_attribution_outbox_backlog",
    "Decisions stored but not yet acknowledged by Kafka.", registry=REGISTRY)
