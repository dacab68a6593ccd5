"""Do the clicks the edge answered all sit in Kafka?  A run whose clicks don't all arrive
does not count.

The edge's own counters (``cps_edge_requests_total``) say what it served; the
clicks topic is read back in full and compared: every request must be there
as exactly one event, and every valid click id exactly once (a duplicate by
click id is counted and reported separately: it only happens after a
failover).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import orjson

from contracts.topics import CLICKS_TOPIC
from devstack.kafka_admin import scan_topic

Metrics = dict[str, float]


def parse_metrics(text: bytes) -> Metrics:
    out: Metrics = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def served(metrics: Metrics) -> Counter[str]:
    """Requests the edge answered, by verdict."""
    prefix = 'cps_edge_requests_total{verdict="'
    return Counter({k[len(prefix):-2]: int(v) for k, v in metrics.items()
                    if k.startswith(prefix) and v})


def delivered(metrics: Metrics) -> int:
    """Clicks written somewhere durable (Kafka, Redis or spool) by the edge."""
    return int(sum(v for k, v in metrics.items()
                   if k.startswith("cps_edge_clicks_delivered_total")))


@dataclass
class KafkaCount:
    records: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    distinct_valid: int = 0
    duplicate_valid: int = 0
    malformed: int = 0
    seconds: float = 0.0


async def count_clicks(bootstrap: str, *, limit_s: float = 1800) -> KafkaCount:
    count = KafkaCount()
    valid_ids: set[bytes] = set()
    started = time.monotonic()

    def visit(record: object) -> None:
        count.records += 1
        try:
            event = orjson.loads(record.value)  # type: ignore[attr-defined]
        except orjson.JSONDecodeError:
            count.malformed += 1
            return
        verdict = event.get("verdict", "?")
        count.verdicts[verdict] += 1
        if verdict == "valid":
            click_id = event["click_id"].encode()
            if click_id in valid_ids:
                count.duplicate_valid += 1
            else:
                valid_ids.add(click_id)

    await scan_topic(bootstrap, CLICKS_TOPIC, visit, timeout=limit_s)
    count.distinct_valid = len(valid_ids)
    count.seconds = time.monotonic() - started
    return count


@dataclass
class ClickCheck:
    served: Counter[str]
    kafka: KafkaCount
    # After a failover a replay may deliver a click twice: same click id,
    # deduplicable, counted; anywhere else a duplicate is a fault.
    failover: bool = False

    @property
    def served_total(self) -> int:
        return sum(self.served.values())

    @property
    def ok(self) -> bool:
        """Every answered request is one event; every valid click id arrived once."""
        return (self.kafka.records - self.kafka.duplicate_valid == self.served_total
                and self.kafka.distinct_valid == self.served["valid"]
                and (self.failover or self.kafka.duplicate_valid == 0)
                and self.kafka.malformed == 0)

    def summary(self) -> str:
        state = "ALL ARRIVED" if self.ok else "MISMATCH: the run does not count"
        return (f"{state}: edge answered {self.served_total:,} requests "
                f"({self.served['valid']:,} valid 302s); Kafka holds {self.kafka.records:,} "
                f"events, {self.kafka.distinct_valid:,} distinct valid click ids, "
                f"{self.kafka.duplicate_valid} duplicates")


def wait_delivered(get_metrics: object, *, timeout: float = 120) -> Metrics:
    """Poll the edge until every answered request has been delivered somewhere durable."""
    deadline = time.monotonic() + timeout
    while True:
        m = get_metrics()  # type: ignore[operator]
        if delivered(m) >= sum(served(m).values()) and m.get("cps_edge_buffer_events", 0) == 0:
            return m  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise TimeoutError("the edge did not deliver every click in time")
        time.sleep(0.2)


def check(bootstrap: str, metrics: Metrics, *, failover: bool = False) -> ClickCheck:
    return ClickCheck(served(metrics), asyncio.run(count_clicks(bootstrap)), failover)
