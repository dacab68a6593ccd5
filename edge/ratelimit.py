"""Per-client-IP token buckets (per worker process), bounded in memory."""

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
        tokens = bucket[0] + (now - bucket[1]) * self._rate
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
        if len(self._buckets) >= self._max:
            self._buckets.clear()
