"""The click event's one writer (event_head + event_tail) against its one reader (ClickEvent)."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.clicks import (
    MAX_RAW_QUERY,
    MAX_REFERER,
    MAX_USER_AGENT,
    ClickEvent,
    Verdict,
    click_record,
    event_head,
    event_tail,
    record_key,
)
from contracts.links import Link, LinkVerdict

FIELDS = set(ClickEvent.__dataclass_fields__)
LINK = Link(promoter_id="p1", channel_id="live", target="https://shop.example.com/x",
            expires_at=1_900_000_000, position_id="pos-1", shop_id="s1", product_id="42",
            sub_ids=("", "b"))
CLICK_ID = "0" * 28


def encode(head: bytes, verdict: Verdict = Verdict.VALID, buyer: str = "v1",
           user_agent: bytes = b"Mozilla/5.0", referer: bytes = b"") -> bytes:
    record = click_record(head, event_tail(CLICK_ID, 1_764_800_000_000, verdict.value, "",
                                           buyer, "10.0.0.1", user_agent, referer),
                          1_764_800_000_000, buyer)
    return record[2]


def test_a_verified_link_event_carries_every_field_raw_query_null() -> None:
    raw = encode(event_head(LINK, sig="ab" * 32, kid="k1"))
    obj = orjson.loads(raw)
    assert set(obj) == FIELDS
    assert obj["raw_query"] is None
    event = ClickEvent.from_json(raw)
    assert (event.promoter_id, event.shop_id, event.sub_ids, event.link_exp) == (
        "p1", "s1", ("", "b"), 1_900_000_000)
    assert event.link_sig == "ab" * 32
    assert event.link_kid == "k1"
    assert event.verdict is Verdict.VALID
    assert event.billable


def test_an_unverifiable_link_event_carries_every_field_link_fields_null() -> None:
    raw = encode(event_head(raw_query="p=x&sig=bad"), Verdict.BAD_SIGNATURE, buyer="")
    obj = orjson.loads(raw)
    assert set(obj) == FIELDS
    assert obj["raw_query"] == "p=x&sig=bad"
    assert [obj[k] for k in ("promoter_id", "channel_id", "position_id", "shop_id",
                             "product_id", "target", "link_sig", "link_kid", "link_exp")] \
        == [None] * 9
    assert obj["sub_ids"] == []
    assert ClickEvent.from_json(raw).verdict is Verdict.BAD_SIGNATURE


def test_field_order_is_fixed() -> None:
    keys = list(orjson.loads(encode(event_head(LINK, sig="s", kid="k"))))
    assert keys == ["version", "promoter_id", "channel_id", "position_id", "shop_id",
                    "product_id", "sub_ids", "target", "link_sig", "link_kid", "link_exp",
                    "raw_query", "click_id", "ts", "verdict", "reason", "buyer_key", "ip",
                    "user_agent", "referer"]


def test_headers_are_truncated_and_decoded_safely() -> None:
    raw = encode(event_head(raw_query="q" * 5000), Verdict.MALFORMED,
                 user_agent=b"\xff" * 5000, referer=b"r" * 5000)
    event = ClickEvent.from_json(raw)
    assert len(event.raw_query or "") == MAX_RAW_QUERY
    assert event.user_agent == "\ufffd" * MAX_USER_AGENT
    assert event.referer == "r" * MAX_REFERER


def test_record_key_is_the_buyer() -> None:
    head = event_head(LINK, sig="s", kid="k")
    tail = event_tail(CLICK_ID, 5, "valid", "", "v9", "", b"", b"")
    assert click_record(head, tail, 5, "v9")[:2] == (5, record_key("v9"))
    assert click_record(head, tail, 5, "")[1] is None


def test_one_verdict_enum() -> None:
    assert LinkVerdict is Verdict


@settings(max_examples=200)
@given(verdict=st.sampled_from(Verdict), reason=st.text(max_size=200),
       user_agent=st.binary(max_size=700), referer=st.binary(max_size=1200),
       raw_query=st.none() | st.text(max_size=700), with_link=st.booleans())
def test_property_whatever_the_edge_writes_the_reader_accepts(
        verdict: Verdict, reason: str, user_agent: bytes, referer: bytes,
        raw_query: str | None, with_link: bool) -> None:
    head = event_head(LINK, sig="s" * 64, kid="k1") if with_link else \
        event_head(raw_query=raw_query)
    buyer = "v1" if with_link else ""
    if verdict is Verdict.VALID and not with_link:
        verdict = Verdict.MALFORMED  # a valid click always has its link
    tail = event_tail(CLICK_ID, 1_764_800_000_000, verdict.value, reason, buyer, "::1",
                      user_agent, referer)
    raw = click_record(head, tail, 1, buyer)[2]
    event = ClickEvent.from_json(raw)
    assert set(orjson.loads(raw)) == FIELDS
    assert event.verdict is verdict
    assert event.reason == reason
