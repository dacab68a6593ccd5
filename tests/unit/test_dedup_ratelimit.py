"""Repeat-click window (edge.dedup) and per-IP token buckets (edge.ratelimit)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.dedup import DuplicateWindow, FirstClick
from edge.ratelimit import IpRateLimiter

WINDOW_S = 30
WINDOW_MS = WINDOW_S * 1000


def first(now_ms: int, window_ms: int = WINDOW_MS, click_id: str = "c1") -> FirstClick:
    return FirstClick(now_ms + window_ms, click_id, "buyer-" + click_id,
                      b"https://shop.example.com/?cps_click_id=" + click_id.encode(),
                      b"cps_attr=sealed-" + click_id.encode())


# ------------------------------------------------------------------ DuplicateWindow


def test_get_within_window_returns_the_first_click() -> None:
    w = DuplicateWindow(WINDOW_S, 100)
    key = ("visitor", "sig")
    fc = first(1_000)
    w.remember(key, fc, 1_000)
    assert w.get(key, 1_000) == fc
    assert w.get(key, 1_000 + WINDOW_MS - 1) == fc
    assert len(w) == 1


def test_get_at_exactly_expiry_and_after_is_none() -> None:
    w = DuplicateWindow(WINDOW_S, 100)
    key = ("visitor", "sig")
    fc = first(1_000)
    w.remember(key, fc, 1_000)
    assert fc.expires_ms == 1_000 + WINDOW_MS
    # The window is half-open: [click, click + window).
    assert w.get(key, fc.expires_ms - 1) == fc
    assert w.get(key, fc.expires_ms) is None
    assert w.get(key, fc.expires_ms + 1) is None


def test_get_unknown_key_is_none() -> None:
    w = DuplicateWindow(WINDOW_S, 100)
    w.remember(("a", "s"), first(0), 0)
    assert w.get(("b", "s"), 0) is None
    assert w.get(("a", "other-sig"), 0) is None


def test_remember_replaces_the_entry_for_a_key() -> None:
    w = DuplicateWindow(WINDOW_S, 100)
    key = ("visitor", "sig")
    w.remember(key, first(0, click_id="old"), 0)
    newer = first(WINDOW_MS, click_id="new")  # the old one expired at exactly this time
    w.remember(key, newer, WINDOW_MS)
    assert w.get(key, WINDOW_MS) == newer
    assert w.get(key, WINDOW_MS + WINDOW_MS - 1) == newer
    assert len(w) == 1


def test_replacing_within_window_keeps_the_newest_value() -> None:
    w = DuplicateWindow(WINDOW_S, 100)
    key = ("visitor", "sig")
    w.remember(key, first(0, click_id="one"), 0)
    two = first(5, click_id="two")
    w.remember(key, two, 5)
    assert w.get(key, 10) == two
    assert len(w) == 1
    # The stale order record of "one" must not delete "two" when it expires.
    assert w.get(key, WINDOW_MS + 1) == two
    w.remember(("other", "sig"), first(WINDOW_MS + 1, click_id="x"), WINDOW_MS + 1)
    assert w.get(key, WINDOW_MS + 1) == two


def test_bounded_by_max_entries_oldest_evicted_first() -> None:
    w = DuplicateWindow(WINDOW_S, 3)
    keys = [(f"v{i}", "sig") for i in range(5)]
    for i, key in enumerate(keys):
        w.remember(key, first(i, click_id=str(i)), i)
        assert len(w) <= 3
    assert len(w) == 3
    # v0 and v1 were the oldest: gone; v2..v4 still answer.
    assert w.get(keys[0], 10) is None
    assert w.get(keys[1], 10) is None
    for i in (2, 3, 4):
        found = w.get(keys[i], 10)
        assert found is not None
        assert found.click_id == str(i)


def test_window_zero_disables() -> None:
    w = DuplicateWindow(0, 100)
    assert w.window_ms == 0
    key = ("visitor", "sig")
    w.remember(key, first(0, window_ms=0), 0)
    assert len(w) == 0
    assert w.get(key, 0) is None


def test_expiry_housekeeping_keeps_memory_bounded() -> None:
    window_s = 1
    w = DuplicateWindow(window_s, 1_000_000)  # the size bound never bites here
    peak = 0
    for i in range(100_000):
        now = i  # one new click per millisecond
        w.remember((f"v{i}", "sig"), first(now, window_ms=1000, click_id=str(i)), now)
        peak = max(peak, len(w))
    # Only the clicks of the last second can still be live.
    assert peak <= 1001
    assert len(w) <= 1001
    assert len(w._order) <= 1001
    last = w.get(("v99999", "sig"), 99_999)
    assert last is not None
    assert w.get(("v0", "sig"), 99_999) is None


def test_size_bound_over_many_inserts_without_expiry() -> None:
    w = DuplicateWindow(3600, 500)
    for i in range(20_000):
        w.remember((f"v{i}", "s"), first(0, window_ms=3_600_000, click_id=str(i)), 0)
    assert len(w) == 500
    assert len(w._order) <= 500
    # The newest 500 survive.
    assert w.get(("v19999", "s"), 0) is not None
    assert w.get(("v19500", "s"), 0) is not None
    assert w.get(("v19499", "s"), 0) is None


# ------------------------------------------------------------------ IpRateLimiter


def test_burst_then_refill_at_rate() -> None:
    lim = IpRateLimiter(rate_per_s=2, burst=3)
    assert lim.enabled
    assert [lim.allow("1.1.1.1", 100.0) for _ in range(4)] == [True, True, True, False]
    assert lim.allow("1.1.1.1", 100.4) is False  # 0.8 token
    assert lim.allow("1.1.1.1", 100.5) is True  # 1.0 token
    assert lim.allow("1.1.1.1", 100.5) is False
    # A long pause refills to the burst, never beyond it.
    assert [lim.allow("1.1.1.1", 1000.0) for _ in range(4)] == [True, True, True, False]


def test_refill_is_linear_in_elapsed_time() -> None:
    lim = IpRateLimiter(rate_per_s=10, burst=10)
    for _ in range(10):
        assert lim.allow("ip", 0.0)
    assert not lim.allow("ip", 0.0)
    # After 0.5 s: five more tokens, exactly.
    assert [lim.allow("ip", 0.5) for _ in range(6)] == [True] * 5 + [False]


def test_separate_ips_are_independent() -> None:
    lim = IpRateLimiter(rate_per_s=1, burst=2)
    assert lim.allow("a", 0.0)
    assert lim.allow("a", 0.0)
    assert not lim.allow("a", 0.0)
    assert lim.allow("b", 0.0)
    assert lim.allow("b", 0.0)
    assert not lim.allow("b", 0.0)
    assert lim.allow("2001:db8::1", 0.0)


def test_disabled_when_rate_is_zero() -> None:
    assert IpRateLimiter(rate_per_s=0, burst=10).enabled is False
    assert IpRateLimiter(rate_per_s=0.001, burst=10).enabled is True


def test_fractional_tokens() -> None:
    lim = IpRateLimiter(rate_per_s=0.5, burst=1)
    assert lim.allow("ip", 0.0)
    assert not lim.allow("ip", 1.0)  # 0.5 token
    assert not lim.allow("ip", 1.9)  # 0.95 token
    assert lim.allow("ip", 2.0)  # 1.0 token exactly
    assert not lim.allow("ip", 2.0)


def test_fractional_rate_above_one() -> None:
    lim = IpRateLimiter(rate_per_s=2.5, burst=1)
    assert lim.allow("ip", 0.0)
    assert not lim.allow("ip", 0.2)  # 0.5
    assert lim.allow("ip", 0.4)  # 0.5 + 0.5
    assert not lim.allow("ip", 0.4)


def test_denied_requests_do_not_spend_tokens() -> None:
    lim = IpRateLimiter(rate_per_s=1, burst=1)
    assert lim.allow("ip", 0.0)
    for t in (0.1, 0.2, 0.5, 0.9):
        assert not lim.allow("ip", t)
    assert lim.allow("ip", 1.0)


def test_memory_bounded_by_max_entries() -> None:
    lim = IpRateLimiter(rate_per_s=1, burst=5, max_entries=100)
    for i in range(10_000):
        assert lim.allow(f"10.0.{i // 256}.{i % 256}", i * 0.001)
        assert len(lim._buckets) <= 100
    assert len(lim._buckets) <= 100


def test_sweep_forgets_idle_buckets_and_keeps_active_ones() -> None:
    lim = IpRateLimiter(rate_per_s=1, burst=2, max_entries=3)  # refill time 2 s
    assert lim.allow("a", 0.0)
    assert lim.allow("b", 0.0)
    assert lim.allow("c", 1.5)
    assert lim.allow("c", 1.5)
    assert not lim.allow("c", 1.5)
    # A fourth address while full: a and b (idle 2.5 s >= refill) are dropped, c is kept.
    assert lim.allow("d", 2.5)
    assert set(lim._buckets) == {"c", "d"}
    # c's state survived: one token refilled, not a fresh bucket of two.
    assert lim.allow("c", 2.5)
    assert not lim.allow("c", 2.5)


def test_sweep_clears_everything_when_all_buckets_are_active() -> None:
    lim = IpRateLimiter(rate_per_s=1, burst=2, max_entries=2)
    assert lim.allow("a", 0.0)
    assert lim.allow("b", 0.0)
    assert lim.allow("c", 0.1)  # nothing idle: the table is reset to bound memory
    assert len(lim._buckets) <= 2
    assert "c" in lim._buckets


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(min_value=0.05, max_value=200, allow_nan=False, allow_infinity=False),
    burst=st.integers(min_value=1, max_value=30),
    gaps_ms=st.lists(st.integers(min_value=0, max_value=3000), min_size=1, max_size=150),
    start_ms=st.integers(min_value=0, max_value=10**12),
)
def test_allowed_in_any_span_never_exceeds_burst_plus_rate_times_span(
        rate: float, burst: int, gaps_ms: list[int], start_ms: int) -> None:
    lim = IpRateLimiter(rate, burst)
    now_ms = start_ms
    allowed: list[int] = []
    for gap in gaps_ms:
        now_ms += gap
        if lim.allow("203.0.113.7", now_ms / 1000):
            allowed.append(now_ms)
    # The very first request is always admitted (the bucket starts full).
    assert allowed
    assert allowed[0] == start_ms + gaps_ms[0]
    for i in range(len(allowed)):
        for j in range(i, len(allowed)):
            span = (allowed[j] - allowed[i]) / 1000
            assert j - i + 1 <= burst + rate * span + 1e-6, (i, j, span)


@settings(max_examples=100, deadline=None)
@given(burst=st.integers(min_value=1, max_value=50), n=st.integers(min_value=0, max_value=120))
def test_simultaneous_requests_admit_exactly_burst(burst: int, n: int) -> None:
    lim = IpRateLimiter(rate_per_s=3, burst=burst)
    results = [lim.allow("ip", 42.0) for _ in range(n)]
    assert sum(results) == min(n, burst)
    assert results == sorted(results, reverse=True)


@pytest.mark.parametrize("max_entries", [1, 2, 10])
def test_tiny_tables_stay_bounded(max_entries: int) -> None:
    lim = IpRateLimiter(rate_per_s=5, burst=1, max_entries=max_entries)
    for i in range(500):
        lim.allow(str(i % 37), i * 0.01)
        assert len(lim._buckets) <= max_entries


def test_sweeps_are_amortised(monkeypatch: pytest.MonkeyPatch) -> None:
    sweeps = 0
    real = IpRateLimiter._sweep

    def counting(self: IpRateLimiter, now: float) -> None:
        nonlocal sweeps
        sweeps += 1
        real(self, now)

    monkeypatch.setattr(IpRateLimiter, "_sweep", counting)
    max_entries = 1000
    lim = IpRateLimiter(rate_per_s=1, burst=10, max_entries=max_entries)  # refill time 10 s
    inserts = 20_000
    for i in range(inserts):
        lim.allow(f"2001:db8::{i:x}", i / 100)  # 100 new addresses/s = max_entries / 10 s
    assert len(lim._buckets) <= max_entries
    # Each sweep should buy room for a good fraction of the table.
    assert sweeps <= inserts // (max_entries // 2) + 1


def test_clock_stepping_back_does_not_lock_out_clients() -> None:
    lim = IpRateLimiter(rate_per_s=100, burst=500)
    assert lim.allow("ip", 1000.0)  # 499 tokens left
    assert lim.allow("ip", 990.0)  # NTP stepped the clock back 10 s
