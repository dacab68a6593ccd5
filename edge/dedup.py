"""Repeat clicks: the same buyer on the same link within a window is a ``duplicate``.

A duplicate is answered with the first click's click id and attribution (the
cookie is sealed again, so its bytes differ but it unseals to the same
content), so double taps and reloads are harmless, and its event is recorded
as ``duplicate`` (not billable).

A fixed-size direct-mapped table per worker: slot = hash of (buyer, link);
the slot keeps the full 64-bit hash (so a different buyer never matches) and
the 50 characters of click id + visitor id.  A newer click landing in an
occupied slot overwrites it: under extreme load some repeats are then counted
as new clicks, but memory stays fixed and no operation ever rehashes or frees
a big structure (which would stall the event loop).
"""

from __future__ import annotations

from array import array

from contracts.ids import click_id_ms

CLICK_ID_LEN = 28


def _table_size(entries: int) -> int:
    size = 1
    while size < entries:
        size <<= 1
    return size


class DuplicateWindow:
    __slots__ = ("_keys", "_mask", "_values", "window_ms")

    def __init__(self, window_s: int, max_entries: int) -> None:
        self.window_ms = window_s * 1000
        size = _table_size(max_entries) if window_s else 1
        self._mask = size - 1
        self._keys = array("q", bytes(8 * size))
        self._values: list[str] = [""] * size

    def __len__(self) -> int:
        return sum(1 for v in self._values if v)

    def get(self, key: int, now_ms: int) -> tuple[str, str] | None:
        """(click id, visitor id) of the first click under ``key`` still in the window."""
        i = key & self._mask
        found = self._values[i]
        # An empty slot holds key 0, which a real hash can equal: check the value.
        if not found or self._keys[i] != key:
            return None
        click_id = found[:CLICK_ID_LEN]
        if click_id_ms(click_id) + self.window_ms <= now_ms:
            return None
        return click_id, found[CLICK_ID_LEN:]

    def remember(self, key: int, click_id: str, visitor_id: str,
                 alias: int | None = None) -> None:
        """Remember a first click under ``key`` (and ``alias``, another name of the buyer)."""
        if not self.window_ms:
            return
        value = click_id + visitor_id
        i = key & self._mask
        self._keys[i] = key
        self._values[i] = value
        if alias is not None:
            i = alias & self._mask
            self._keys[i] = alias
            self._values[i] = value
