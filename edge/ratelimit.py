"""Per-client-IP rate limit (per worker process): GCRA in a fixed table of floats.

The generic cell rate algorithm keeps each address's *theoretical arrival
time*: a request is allowed when that time is at most ``(burst - 1) / rate``
ahead of now, and pushes it ``1 / rate`` further: a token bucket of
``burst`` tokens refilled at ``rate`` per second, in one float.  A stale time
is simply in the past, so nothing ever needs expiring.

Addresses index a fixed array by their (per-process randomized) hash, so
memory is fixed and nothing is ever rehashed or swept.  Two addresses sharing
a slot share a bucket; with a million slots that is rare, and an attacker
cannot aim for a victim's slot without knowing the process's hash seed.
Times come from a monotonic clock.
"""

from __future__ import annotations

from array import array

DEFAULT_SLOTS = 1 << 20


class IpRateLimiter:
    __slots__ = ("_interval", "_mask", "_tats", "_tolerance")

    def __init__(self, rate_per_s: float, burst: int, slots: int = DEFAULT_SLOTS) -> None:
        self._interval = 1.0 / rate_per_s if rate_per_s > 0 else 0.0
        self._tolerance = (burst - 1) * self._interval
        size = 1 if rate_per_s <= 0 else 1 << max(0, (slots - 1).bit_length())
        self._mask = size - 1
        self._tats = array("d", bytes(8 * size))

    @property
    def enabled(self) -> bool:
        return self._interval > 0

    def allow(self, ip: str, now: float) -> bool:
        i = hash(ip) & self._mask
        tat = self._tats[i]
        if tat < now:
            tat = now
        if tat - now > self._tolerance:
            return False
        self._tats[i] = tat + self._interval
        return True
