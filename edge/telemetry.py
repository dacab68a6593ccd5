"""Every metric the edge exports (the SRE dashboard queries these names)."""

from __future__ import annotations

from contracts.clicks import Verdict
from edge.metrics import Registry

REGISTRY = Registry()

# Sub-millisecond resolution: a healthy redirect takes tens of microseconds.
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00015, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015,
                   0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
DELIVERY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

PATHS = ("kafka", "redis", "spool")
MODES = ("kafka", "fallback")

requests = REGISTRY.counter(
    "cps_edge_requests_total", "Redirect requests by verdict.", "verdict",
    [v.value for v in Verdict])
request_seconds = REGISTRY.histogram(
    "cps_edge_request_duration_seconds",
    "Time from the redirect handler's entry to the response handed to the server.",
    LATENCY_BUCKETS)
delivered = REGISTRY.counter(
    "cps_edge_clicks_delivered_total",
    "Click events written by the request-path deliverer, by where they went first.", "path", PATHS)
replayed = REGISTRY.counter(
    "cps_edge_clicks_replayed_total",
    "Click events moved out of a fallback store (redis, spool) into Kafka, spool into redis, "
    "or out of a dead worker's hand-off ring into the spool (ring).",
    "source", ("redis", "spool", "spool_to_redis", "ring"))
delivery_errors = REGISTRY.counter(
    "cps_edge_delivery_errors_total", "Failed delivery attempts (batches), by path.", "path", PATHS)
dropped = REGISTRY.counter(
    "cps_edge_clicks_dropped_total",
    "Click events lost because Kafka, Redis and the disk spool all failed (should stay 0).")
overflow = REGISTRY.counter(
    "cps_edge_buffer_overflow_total",
    "Click events spooled straight from the request path because the buffer was full.")
kafka_seconds = REGISTRY.histogram(
    "cps_edge_kafka_delivery_seconds", "Time for Kafka to acknowledge one delivery round.",
    DELIVERY_BUCKETS)
buffer_events = REGISTRY.gauge(
    "cps_edge_buffer_events", "Click events waiting in the in-process buffers.")
spool_records = REGISTRY.gauge(
    "cps_edge_spool_pending_records", "Click events waiting in this host's disk spools.")
spool_bytes = REGISTRY.gauge(
    "cps_edge_spool_pending_bytes", "Bytes waiting in this host's disk spools.")
fallback_records = REGISTRY.gauge(
    "cps_edge_fallback_pending_records",
    "Click events waiting in the Redis fallback stream (shared by all edges).", mode="max")
delivery_mode = REGISTRY.gauge(
    "cps_edge_delivery_mode", "Worker processes delivering straight to Kafka or to the fallback.",
    label="mode", values=MODES)
link_cache = REGISTRY.gauge(
    "cps_edge_link_cache_entries", "Verified links cached by the workers.")
workers = REGISTRY.gauge("cps_edge_workers", "Live edge worker processes.")
