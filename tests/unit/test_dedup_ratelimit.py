"""DuplicateWindow (direct-mapped table) and IpRateLimiter (GCRA in a fixed table)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.ids import new_click_id
from edge.dedup import DuplicateWindow
from edge.ratelimit import IpRateLimiter

T0 = 1_795_000_000_000  # ms
VISITOR = "v" * 22

# ------------------------------------------------------------------ duplicates


def window(seconds: int = 30, entries: int = 1024) -> DuplicateWindow:
    return DuplicateWindow(seconds, entries)


def test_first_click_is_found_within_the_window() -> None:
    w = window()
    click = new_click_id(T0)
    w.remember(12345, click, VISITOR, T0)
    assert w.get(12345, T0) == (click, VISITOR)
    assert w.get(12345, T0 + 29_999) == (click, VISITOR)


def test_window_ends_exactly_window_ms_after_the_click() -> None:
    w = window(30)
    w.remember(7, new_click_id(T0), VISITOR, T0)
    assert w.get(7, T0 + 30_000) is None
    assert w.get(7, T0 + 31_000) is None


def test_unknown_key_and_key_zero_of_an_empty_slot_are_not_duplicates() -> None:
    w = window()
    w.remember(1, new_click_id(T0), VISITOR, T0)
    assert w.get(2, T0) is None
    assert w.get(0, T0) is None  # empty slots hold key 0


def test_alias_names_the_same_click() -> None:
    w = window()
    click = new_click_id(T0)
    w.remember(100, click, VISITOR, T0, alias=-200)
    assert w.get(100, T0) == (click, VISITOR)
    assert w.get(-200, T0) == (click, VISITOR)


def test_window_zero_disables() -> None:
    w = window(0)
    w.remember(1, new_click_id(T0), VISITOR, T0, alias=2)
    assert w.get(1, T0) is None
    assert w.get(2, T0) is None
    assert len(w) == 0


def test_an_entry_survives_until_four_newer_clicks_share_its_bucket() -> None:
    w = window(entries=16)  # 4 buckets of 4 slots
    first = new_click_id(T0)
    w.remember(5, first, "a" * 22, T0)
    for n in range(1, 4):  # three more in the same bucket (5 + 4k): all four fit
        w.remember(5 + 4 * n, new_click_id(T0 + n), "b" * 22, T0 + n)
    assert w.get(5, T0 + 10) == (first, "a" * 22)
    w.remember(5 + 16, new_click_id(T0 + 5), "c" * 22, T0 + 5)  # the fifth: oldest goes
    assert w.get(5, T0 + 10) is None
    for n in range(1, 4):
        assert w.get(5 + 4 * n, T0 + 10) is not None


def test_expired_slots_are_reused_before_live_ones() -> None:
    w = window(seconds=1, entries=4)  # one bucket
    w.remember(1, new_click_id(T0), VISITOR, T0)  # expires at T0 + 1000
    for n in range(2, 5):
        w.remember(n, new_click_id(T0 + 900), VISITOR, T0 + 900)
    w.remember(9, new_click_id(T0 + 1500), VISITOR, T0 + 1500)
    assert all(w.get(n, T0 + 1500) is not None for n in (2, 3, 4, 9))


def test_remembering_a_key_again_the_newest_copy_wins() -> None:
    w = window(entries=4)
    w.remember(3, new_click_id(T0), VISITOR, T0)
    newer = new_click_id(T0 + 1)
    w.remember(3, newer, VISITOR, T0 + 1)
    assert w.get(3, T0 + 2) == (newer, VISITOR)


def test_table_size_is_fixed_whatever_is_inserted() -> None:
    w = window(entries=1000)
    size = len(w._keys)
    assert size == 1024
    for i in range(100_000):
        w.remember(i * 7919, new_click_id(T0 + i), VISITOR, T0 + i)
    assert len(w._keys) == size
    assert len(w._values) == size


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(-(2**63), 2**63 - 1), st.booleans()), max_size=200))
def test_get_only_ever_returns_what_was_remembered_under_that_key(
        ops: list[tuple[int, bool]]) -> None:
    w = window(entries=8)  # tiny: collisions everywhere
    remembered: dict[int, str] = {}
    for n, (key, write) in enumerate(ops):
        if write:
            click = f"{T0 + n:012x}{n:016x}"
            w.remember(key, click, VISITOR, T0 + n)
            remembered[key] = click
        else:
            found = w.get(key, T0 + n)
            if found is not None:
                assert found[0] == remembered[key]


# ------------------------------------------------------------------ rate limit


def test_burst_then_refill_at_rate() -> None:
    lim = IpRateLimiter(rate_per_s=2, burst=3)
    assert [lim.allow("a", 10.0) for _ in range(4)] == [True, True, True, False]
    assert not lim.allow("a", 10.4)
    assert lim.allow("a", 10.5)  # one token back after 1 / rate
    assert not lim.allow("a", 10.5)


def test_refill_is_linear_and_capped_at_burst() -> None:
    lim = IpRateLimiter(rate_per_s=1, burst=2)
    assert lim.allow("a", 0.0)
    assert lim.allow("a", 0.0)
    # A long pause refills only up to the burst.
    assert [lim.allow("a", 100.0) for _ in range(3)] == [True, True, False]


def test_denied_requests_do_not_spend_tokens() -> None:
    lim = IpRateLimiter(rate_per_s=1, burst=1)
    assert lim.allow("a", 0.0)
    for _ in range(50):
        assert not lim.allow("a", 0.5)
    assert lim.allow("a", 1.0)


def test_addresses_are_independent() -> None:
    lim = IpRateLimiter(rate_per_s=1, burst=1)
    assert lim.allow("10.0.0.1", 0.0)
    assert not lim.allow("10.0.0.1", 0.0)
    assert lim.allow("10.0.0.2", 0.0)


def test_disabled_when_rate_is_zero() -> None:
    lim = IpRateLimiter(rate_per_s=0, burst=5)
    assert not lim.enabled
    assert IpRateLimiter(rate_per_s=1, burst=5).enabled


def test_fractional_rates() -> None:
    lim = IpRateLimiter(rate_per_s=0.5, burst=1)
    assert lim.allow("a", 0.0)
    assert not lim.allow("a", 1.9)
    assert lim.allow("a", 2.0)


def test_memory_is_fixed() -> None:
    lim = IpRateLimiter(rate_per_s=10, burst=5, slots=1000)
    assert len(lim._tats) == 1024
    for i in range(50_000):
        lim.allow(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", i / 1000)
    assert len(lim._tats) == 1024


def test_addresses_sharing_a_slot_share_a_bucket() -> None:
    """The documented price of fixed memory: a one-slot table is one bucket."""
    lim = IpRateLimiter(rate_per_s=1, burst=2, slots=1)
    assert lim.allow("a", 0.0)
    assert lim.allow("b", 0.0)
    assert not lim.allow("c", 0.0)


@settings(max_examples=100)
@given(rate=st.floats(0.5, 50), burst=st.integers(1, 20),
       gaps=st.lists(st.floats(0, 0.5), min_size=1, max_size=300))
def test_admissions_in_any_span_never_exceed_burst_plus_rate_times_span(
        rate: float, burst: int, gaps: list[float]) -> None:
    lim = IpRateLimiter(rate_per_s=rate, burst=burst)
    now, admitted = 0.0, []
    for gap in gaps:
        now += gap
        if lim.allow("x", now):
            admitted.append(now)
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            span = admitted[j] - start
            assert j - i + 1 <= burst + rate * span + 1e-6


@pytest.mark.parametrize(("burst", "n"), [(1, 5), (3, 10), (10, 10), (5, 100)])
def test_simultaneous_requests_admit_exactly_burst(burst: int, n: int) -> None:
    lim = IpRateLimiter(rate_per_s=1, burst=burst)
    assert sum(lim.allow("x", 5.0) for _ in range(n)) == min(burst, n)
