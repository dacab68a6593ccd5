"""The persister's pure part: sorting records into store / skip / dead-letter."""

from __future__ import annotations

from dataclasses import asdict

import orjson

from attribution_worker.persister import CountingMetrics, _decode_entries, decode_records
from contracts.clicks import ClickEvent, Verdict
from contracts.records import encode_batch

TS = 1_733_000_000_000


def raw(verdict: Verdict = Verdict.VALID, **overrides: object) -> bytes:
    event = ClickEvent(click_id=f"{TS:012x}{'1' * 16}", ts=TS, verdict=verdict, reason="r",
                       buyer_key="v1", ip="203.0.113.1", user_agent="UA", referer="",
                       promoter_id="p1", channel_id="ch", shop_id="s1")
    return orjson.dumps({**asdict(event), **overrides})


def test_records_are_sorted_into_clicks_skips_and_bad_ones() -> None:
    decoded = decode_records([(raw(), "t/0", 1), (raw(Verdict.BOT), "t/0", 2), (b"{", "t/0", 3),
                              (None, "t/0", 4), (raw(click_id="c1"), "t/1", 5)])
    assert [c.click_id for c in decoded.clicks] == [f"{TS:012x}{'1' * 16}"]
    assert decoded.skipped == 1
    assert [r for r, _ in decoded.bad] == [b"{", b"", raw(click_id="c1")]
    assert [reason.rsplit("(", 1)[1] for _, reason in decoded.bad] == ["t/0@3)", "t/0@4)",
                                                                       "t/1@5)"]


def test_fallback_entries_decode_like_the_edge_wrote_them() -> None:
    good = encode_batch([(TS, b"v1", raw()), (TS, None, raw(Verdict.EXPIRED))])
    entries = [(b"1-0", {b"n": b"2", b"b": good}), (b"2-0", {b"n": b"1"}),
               (b"3-0", {b"n": b"1", b"b": b"torn"})]
    decoded = _decode_entries("stream", entries)
    assert len(decoded.clicks) == 1
    assert decoded.skipped == 1
    assert [reason for _, reason in decoded.bad] == [
        "entry has no 'b' field (stream/2-0)",
        "batch does not end with a newline (torn write?) (stream/3-0)"]


def test_counting_metrics() -> None:
    m = CountingMetrics()
    m.written("a", 3)
    m.written("b", 2)
    m.batch("a", 5, 0.1)
    m.lag("a", 7)
    assert (m.written_total, m.by_source, m.batches_total, m.records_total, m.last_lag) == \
        (5, {"a": 3, "b": 2}, 1, 5, 7)
