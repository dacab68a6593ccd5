"""``decode_click`` judges every record exactly as ``ClickEvent.from_json`` + ``from_event``."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attribution_worker.click_store.base import NotStorable, StoredClick
from attribution_worker.click_store.decode import decode_click
from contracts.clicks import ClickEvent, SchemaError, Verdict, event_head, event_tail
from contracts.links import Link

TS = 1_733_000_000_000
EDGE_EVENT = asdict(ClickEvent(
    click_id=f"{TS:012x}{'c0' * 8}", ts=TS, verdict=Verdict.VALID, reason="ok",
    buyer_key="Vx3kq0Zf1b2c3d4e5f6g7h", ip="203.0.113.9", user_agent="Mozilla/5.0",
    referer="https://t.example/", promoter_id="p1", channel_id="live", position_id="pos1",
    shop_id="shop-1", product_id="sku-9", sub_ids=("s1", "s2"), target="https://shop.example/",
    link_sig="ab" * 32, link_kid="k1", link_exp=TS // 1000 + 86_400))


def oracle(raw: bytes) -> tuple[Any, ...]:
    """The contract's verdict on ``raw``, as the persister must reach it."""
    try:
        event = ClickEvent.from_json(raw)
    except SchemaError as err:
        return ("bad", str(err))
    if event.verdict is not Verdict.VALID:
        return ("skipped",)
    try:
        return ("stored", StoredClick.from_event(event))
    except NotStorable as err:
        return ("not storable", str(err))


def fast(raw: bytes) -> tuple[Any, ...]:
    try:
        click = decode_click(raw)
    except SchemaError as err:
        return ("bad", str(err))
    except NotStorable as err:
        return ("not storable", str(err))
    return ("skipped",) if click is None else ("stored", click)


_JSON_SCALARS = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
                 | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30))
_JSON = st.recursive(_JSON_SCALARS, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)
_FIELD_VALUES = {
    "version": st.sampled_from([1, 2, 0, True, "1", 1.0, None]),
    "verdict": st.sampled_from([v.value for v in Verdict] + ["VALID", "", None, 1]),
    "ts": st.sampled_from([TS, 0, -1, True, 1.5, "1", None]),
    "click_id": st.sampled_from([f"{TS:012x}{'0' * 16}", "c1", "", None, 3]),
    "buyer_key": st.sampled_from(["b", "", None, "a#b", 5]),
    "promoter_id": st.sampled_from(["p2", "", None, "p 1", 1]),
    "channel_id": st.sampled_from(["ch", None, "", "c#h"]),
    "shop_id": st.sampled_from(["s2", None, "", "*", "s#1"]),
    "sub_ids": st.sampled_from([[], ["a"], [1], "a", None, ["a"] * 6, [None]]),
    "link_exp": st.sampled_from([None, 1, True, "1", 1.5]),
}


@st.composite
def records(draw: st.DrawFn) -> bytes:
    obj: dict[str, Any] = dict(EDGE_EVENT)
    for name in draw(st.lists(st.sampled_from(sorted(obj)), max_size=3, unique=True)):
        choice = draw(st.integers(0, 2))
        if choice == 0:
            del obj[name]
        elif name in _FIELD_VALUES and choice == 1:
            obj[name] = draw(_FIELD_VALUES[name])
        else:
            obj[name] = draw(_JSON)
    if draw(st.integers(0, 9)) == 0:
        obj[draw(st.text(min_size=1, max_size=8))] = draw(_JSON)
    if draw(st.integers(0, 4)) == 0:  # another key order (the fast path learns a few)
        obj = dict(draw(st.permutations(list(obj.items()))))
    return orjson.dumps(obj)


@settings(max_examples=300)
@given(records())
def test_same_judgement_as_the_contract(raw: bytes) -> None:
    assert fast(raw) == oracle(raw)


@settings(max_examples=100)
@given(st.binary(max_size=40) | _JSON.map(orjson.dumps))
def test_same_judgement_on_junk(raw: bytes) -> None:
    assert fast(raw) == oracle(raw)


@pytest.mark.parametrize("verdict", list(Verdict))
def test_each_verdict_of_an_edge_record(verdict: Verdict) -> None:
    raw = orjson.dumps({**EDGE_EVENT, "verdict": verdict.value})
    assert fast(raw) == oracle(raw)
    assert (fast(raw)[0] == "stored") == (verdict is Verdict.VALID)


def test_edge_records_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object) -> None:
        raise AssertionError("the slow path ran for an edge-shaped record")

    monkeypatch.setattr(ClickEvent, "from_dict", classmethod(refuse))
    click = decode_click(orjson.dumps(EDGE_EVENT))
    assert click is not None
    assert click.sub_ids == ("s1", "s2")


def test_the_edges_own_records_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object) -> None:
        raise AssertionError("the slow path ran for an edge-shaped record")

    monkeypatch.setattr(ClickEvent, "from_dict", classmethod(refuse))
    link = Link(promoter_id="p1", channel_id="live", target="https://shop.example/",
                expires_at=TS // 1000 + 60, shop_id="shop-1", sub_ids=("s1",))
    raw = event_head(link, sig="ab" * 32, kid="k1") + event_tail(
        EDGE_EVENT["click_id"], TS, "valid", "ok", "b1", "203.0.113.9", b"ua", b"")
    assert list(orjson.loads(raw)) != list(EDGE_EVENT)  # the edge's key order, not ClickEvent's
    click = decode_click(raw)
    assert click is not None
    assert (click.promoter_id, click.shop_id, click.sub_ids) == ("p1", "shop-1", ("s1",))


def test_another_key_order_is_judged_alike() -> None:
    shuffled = dict(reversed(list(EDGE_EVENT.items())))
    for changes in ({}, {"ts": True}, {"shop_id": 3}, {"verdict": "bot"}, {"sub_ids": [1]}):
        raw = orjson.dumps({**shuffled, **changes})
        assert fast(raw) == oracle(raw)


def test_bad_records_say_why() -> None:
    with pytest.raises(SchemaError, match="not JSON"):
        decode_click(b"{nope")
    with pytest.raises(SchemaError, match="JSON object"):
        decode_click(b"[1]")
    with pytest.raises(SchemaError, match="unknown fields"):
        decode_click(orjson.dumps({**EDGE_EVENT, "extra": 1}))
    with pytest.raises(NotStorable, match="click_id"):
        decode_click(orjson.dumps({**EDGE_EVENT, "click_id": "c1"}))
