"""Instants on command lines and in listings: one parser and one format for every CLI.

Every time in the system is an integer of milliseconds since the epoch (UTC).  People
type ``2026-12-19`` (00:00 UTC), an ISO 8601 datetime (UTC unless it carries an offset)
or the milliseconds themselves; listings print ``2026-12-19 00:00:00.000Z``.  Instants
outside ``contracts.orders.MIN_TS_MS .. MAX_TS_MS`` (2001..2286) are refused, which also
catches seconds typed where milliseconds were meant.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from contracts.orders import MAX_TS_MS, MIN_TS_MS

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def parse_instant_ms(value: str) -> int:
    """Milliseconds since the epoch of ``value``; ``ValueError`` saying why not."""
    text = value.strip()
    if text.isdigit():
        ms = int(text)
    else:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{value!r} is neither an ISO 8601 date/time nor ms since the "
                             f"epoch") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        ms = (moment - _EPOCH) // _MS
    if not MIN_TS_MS <= ms <= MAX_TS_MS:
        hint = " in milliseconds (seconds given?)" if text.isdigit() else ""
        raise ValueError(f"{value!r} is outside {format_ms(MIN_TS_MS)} .. "
                         f"{format_ms(MAX_TS_MS)}{hint}")
    return ms


def format_ms(ms: int | None) -> str:
    """``2026-12-19 00:00:00.000Z``; ``-`` for None."""
    if ms is None:
        return "-"
    moment = datetime.fromtimestamp(ms // 1000, UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S") + f".{ms % 1000:03d}Z"
