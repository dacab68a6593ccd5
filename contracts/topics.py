"""Names shared by producers and consumers across services, and the click partitioner."""

from __future__ import annotations

import struct
from collections.abc import Callable

_c_murmur2: Callable[[bytes, int], int] | None
try:
    from murmurhash2 import murmurhash2 as _c_murmur2
except ImportError:  # pragma: no cover - the wheel is a declared dependency
    _c_murmur2 = None

# Kafka topics.  The version suffix changes only with an incompatible schema.
CLICKS_TOPIC = "cps.clicks.v1"
ORDERS_TOPIC = "cps.orders.v1"  # contracts.orders, keyed by order_id
ATTRIBUTIONS_TOPIC = "cps.attributions.v1"  # contracts.attribution, keyed by order_id
# contracts.charges: billing asks the funds system to take a commission, and hears back.
CHARGE_REQUESTS_TOPIC = "cps.charge-requests.v1"  # ChargeRequest, keyed by order_id
CHARGE_RESULTS_TOPIC = "cps.charge-results.v1"  # ChargeResult, keyed by order_id
# Messages a consumer could not use (bad schema, unknown master data, a broken
# status machine), with the reason in headers and the raw bytes as the value.
DEAD_LETTER_TOPIC = "cps.deadletter.v1"

# Redis fallback for clicks while Kafka is unreachable (a Redis Stream).
CLICK_FALLBACK_STREAM = "cps:clicks:fallback"
# How many clicks the fallback stream holds (entries hold batches).
CLICK_FALLBACK_PENDING = "cps:clicks:fallback:pending"
# Consumer group whose members move fallback entries into Kafka.
CLICK_FALLBACK_GROUP = "cps-click-drain"

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_SEED = 0x9747B28C


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (Java ``Utils.murmur2``) in pure Python: the reference.

    ``partition_for`` uses the C implementation of the same function (tests
    check they agree); this one documents it and stands in without the wheel.
    """
    length = len(data)
    h = _SEED ^ length
    n4 = length // 4
    for k in struct.unpack_from(f"<{n4}I", data):
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length & 3
    if tail:
        base = n4 * 4
        if tail == 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h ^= data[base]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key``.

    Clicks keyed by buyer land where a Java/Kafka Streams producer keyed by the
    same buyer would, so downstream joins on buyer stay co-partitioned.
    """
    h = _c_murmur2(key, _SEED) if _c_murmur2 is not None else murmur2(key)
    return (h & 0x7FFFFFFF) % partitions
