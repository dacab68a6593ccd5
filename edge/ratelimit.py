"""Per-client-IP token buckets (per worker process), bounded in memory.

Times come from a monotonic clock: a wall-clock step backwards must not drain
every bucket.
"""

from __future__ import annotations


class IpRateLimiter:
    __slots__ = ("_buckets", "_burst", "_max", "_rate")

    def __init__(self, rate_per_s: float, burst: int, max_entries: int = 100_000) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._max = max_entries
        # ip -> [tokens, last refill time]
        self._buckets: dict[str, list[float]] = {}

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def allow(self, ip: str, now: float) -> bool:
        bucket = self._buckets.get(ip)
        if bucket is None:
            if len(self._buckets) >= self._max:
                self._sweep(now)
            self._buckets[ip] = [self._burst - 1.0, now]
            return True
        elapsed = now - bucket[1]
        tokens = bucket[0] + (elapsed if elapsed > 0 else 0.0) * self._rate
        if tokens > self._burst:
            tokens = self._burst
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def _sweep(self, now: float) -> None:
        # A bucket idle long enough to be full again holds no state worth keeping.
        refill = self._burst / self._rate
        self._buckets = {ip: b for ip, b in self._buckets.items() if now - b[1] < refill}
        # A sweep that frees little would run again after a few new addresses,
        # a full pass each time: forgetting everyone is cheaper, and only
        # forgives clients that were being limited.
        if len(self._buckets) >= self._max * 3 // 4:
            self._buckets.clear()
