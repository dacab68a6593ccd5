"""Repeat clicks: the same buyer on the same link within a window is a ``duplicate``.

A duplicate is answered with the first click's click id and attribution (the
cookie is sealed again, so its bytes differ but it unseals to the same
content), so double taps and reloads are harmless, and its event is recorded
as ``duplicate`` (not billable).

A fixed-size, 4-way set-associative table per worker: a key (64-bit hash of
buyer and link) picks a bucket of four slots; a new click takes the bucket's
oldest slot (empty and expired slots are oldest).  An entry therefore lives
until four newer entries hash into its bucket: at 10,000 new cookie-less clicks
a second on one worker (two entries each: the device key and the new visitor
id) with the default 524,288 slots, a repeat 2 s later is still recognised
99.97 % of the time, 10 s later 93 % (Poisson arrivals per bucket).  Memory
is fixed (about 40 MB at the default: the two entries share one string) and
nothing ever rehashes or frees a big structure, which would stall the event
loop.
"""

from __future__ import annotations

from array import array

CLICK_ID_LEN = 28
WAYS = 4


class DuplicateWindow:
    __slots__ = ("_bucket_mask", "_keys", "_ms", "_values", "window_ms")

    def __init__(self, window_s: int, max_entries: int) -> None:
        self.window_ms = window_s * 1000
        buckets = 1
        while buckets * WAYS < max_entries:
            buckets <<= 1
        size = buckets * WAYS if window_s else WAYS
        self._bucket_mask = (size // WAYS) - 1
        self._keys = array("q", bytes(8 * size))
        self._ms = array("q", bytes(8 * size))  # click time: 0 = empty
        self._values: list[str] = [""] * size

    def __len__(self) -> int:
        return sum(1 for ms in self._ms if ms)

    def get(self, key: int, now_ms: int) -> tuple[str, str] | None:
        """(click id, visitor id) of the first click under ``key`` still in the window."""
        b = (key & self._bucket_mask) * WAYS
        keys, ms = self._keys, self._ms
        # Inserts do not look for an older copy of their key (that would cost
        # every click a scan), so the newest live copy wins here.  On a miss,
        # the common case, all four slots are compared either way.
        i, newest = -1, now_ms - self.window_ms
        if keys[b] == key and ms[b] > newest:
            i, newest = b, ms[b]
        if keys[b + 1] == key and ms[b + 1] > newest:
            i, newest = b + 1, ms[b + 1]
        if keys[b + 2] == key and ms[b + 2] > newest:
            i, newest = b + 2, ms[b + 2]
        if keys[b + 3] == key and ms[b + 3] > newest:
            i = b + 3
        if i < 0:
            return None
        value = self._values[i]
        return value[:CLICK_ID_LEN], value[CLICK_ID_LEN:]

    def remember(self, key: int, click_id: str, visitor_id: str, now_ms: int,
                 alias: int | None = None) -> None:
        """Remember a first click under ``key`` (and ``alias``, another name of the buyer)."""
        if not self.window_ms:
            return
        value = click_id + visitor_id
        self._put(key, value, now_ms)
        if alias is not None:
            self._put(alias, value, now_ms)

    def _put(self, key: int, value: str, now_ms: int) -> None:
        # The bucket's oldest slot (empty slots hold time 0), unrolled: this runs
        # on every click.
        b = (key & self._bucket_mask) * WAYS
        ms = self._ms
        victim, oldest = b, ms[b]
        t = ms[b + 1]
        if t < oldest:
            victim, oldest = b + 1, t
        t = ms[b + 2]
        if t < oldest:
            victim, oldest = b + 2, t
        if ms[b + 3] < oldest:
            victim = b + 3
        self._keys[victim] = key
        ms[victim] = now_ms
        self._values[victim] = value
