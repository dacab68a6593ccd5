"""Repeat clicks: the same buyer on the same link within a window is a ``duplicate``.

A duplicate gets exactly the answer the first click got (same click id in the
Location, same sealed cookie), so double taps and reloads are harmless, and
its event is recorded as ``duplicate`` (not billable).  Per worker process and
bounded: the oldest entries are forgotten first.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple


class FirstClick(NamedTuple):
    expires_ms: int
    click_id: str
    buyer_key: str
    location: bytes
    set_cookie: bytes


class DuplicateWindow:
    __slots__ = ("_entries", "_max", "_order", "window_ms")

    def __init__(self, window_s: int, max_entries: int) -> None:
        self.window_ms = window_s * 1000
        self._max = max_entries
        self._entries: dict[tuple[str, str], FirstClick] = {}
        # Insertion order is expiry order (one window for all), so expiry is a popleft.
        self._order: deque[tuple[int, tuple[str, str]]] = deque()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[str, str], now_ms: int) -> FirstClick | None:
        first = self._entries.get(key)
        if first is None or first.expires_ms <= now_ms:
            return None
        return first

    def remember(self, key: tuple[str, str], first: FirstClick, now_ms: int) -> None:
        if not self.window_ms:
            return
        order = self._order
        entries = self._entries
        while order and (order[0][0] <= now_ms or len(entries) >= self._max):
            expires, old = order.popleft()
            current = entries.get(old)
            if current is not None and current.expires_ms == expires:
                del entries[old]
        entries[key] = first
        order.append((first.expires_ms, key))
