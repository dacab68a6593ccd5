"""The stored click, its validation and encoding, and the row-key rules (pure logic)."""

from __future__ import annotations

import copy
import pickle
from dataclasses import FrozenInstanceError, fields, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attribution_worker.click_store.base import (
    MAX_TS_MS,
    ClickStoreError,
    NotStorable,
    StoredClick,
    escape_key_part,
    index_suffix,
    retained,
    window_bounds,
)
from attribution_worker.click_store.bigtable_store import (
    id_row_key,
    index_prefix,
    index_row_key,
    latest_range,
)
from contracts.clicks import ClickEvent, Verdict

TS = 1_733_000_000_000


def stored(**overrides: object) -> StoredClick:
    fields: dict[str, object] = dict(
        click_id=f"{TS:012x}{'ab' * 8}", ts_ms=TS, buyer_key="visitor-1", promoter_id="p1",
        channel_id="live", position_id="pos-2", shop_id="shop-1", product_id="sku-9",
        sub_ids=("a", "b"), link_exp=TS // 1000 + 3600)
    fields.update(overrides)
    return StoredClick(**fields)  # type: ignore[arg-type]


def event(**overrides: object) -> ClickEvent:
    fields: dict[str, object] = dict(
        click_id=f"{TS:012x}{'ab' * 8}", ts=TS, verdict=Verdict.VALID, reason="ok",
        buyer_key="visitor-1", ip="203.0.113.9", user_agent="Mozilla/5.0", referer="",
        promoter_id="p1", channel_id="live", position_id=None, shop_id="shop-1",
        product_id=None, sub_ids=("x",), target="https://shop.example/", link_sig="ab" * 32,
        link_kid="k1", link_exp=TS // 1000 + 3600)
    fields.update(overrides)
    return ClickEvent(**fields)  # type: ignore[arg-type]


# -- StoredClick ------------------------------------------------------------------


def test_a_stored_click_is_a_frozen_dataclass_however_it_is_made() -> None:
    c = stored()
    assert type(c) is StoredClick
    assert [f.name for f in fields(c)] == list(StoredClick.__slots__)
    with pytest.raises(FrozenInstanceError):
        c.shop_id = None  # type: ignore[misc]
    assert not hasattr(c, "__dict__")
    positional = StoredClick(*(getattr(c, name) for name in StoredClick.__slots__))
    unpickled = pickle.loads(pickle.dumps(c))  # noqa: S301 (our own bytes)
    for twin in (positional, copy.copy(c), copy.deepcopy(c), unpickled, replace(c)):
        assert type(twin) is StoredClick
        assert twin == c
        assert hash(twin) == hash(c)
    assert replace(c, shop_id=None).sitewide
    assert stored(shop_id="shop-2") != c
    with pytest.raises(NotStorable, match="click_id"):
        replace(c, click_id="c1")
    with pytest.raises(TypeError):
        StoredClick(c.click_id)  # type: ignore[call-arg]


def test_from_event_keeps_what_attribution_needs() -> None:
    c = StoredClick.from_event(event())
    assert c == stored(position_id=None, product_id=None, sub_ids=("x",))
    assert not c.sitewide
    assert StoredClick.from_event(event(shop_id=None)).sitewide


@pytest.mark.parametrize("verdict", [v for v in Verdict if v is not Verdict.VALID])
def test_only_valid_clicks_are_stored(verdict: Verdict) -> None:
    with pytest.raises(NotStorable, match="verdict"):
        StoredClick.from_event(event(verdict=verdict))


def test_a_valid_click_without_channel_is_refused() -> None:
    with pytest.raises(NotStorable, match="channel_id"):
        StoredClick.from_event(event(channel_id=None))


@pytest.mark.parametrize(("field", "value"), [
    ("click_id", "c1"), ("click_id", "A" * 28), ("click_id", "0" * 29), ("click_id", 5),
    ("ts_ms", -1), ("ts_ms", MAX_TS_MS + 1), ("ts_ms", True), ("ts_ms", 1.5),
    ("buyer_key", ""), ("buyer_key", "x" * 257), ("buyer_key", None),
    ("promoter_id", ""), ("promoter_id", "p 1"), ("channel_id", "a#b"),
    ("shop_id", ""), ("shop_id", "*"), ("shop_id", "s#1"), ("product_id", "x" * 65),
    ("position_id", 7), ("sub_ids", ["a"]), ("sub_ids", ("a",) * 6), ("sub_ids", ("x" * 101,)),
    ("link_exp", "soon"),
])
def test_fields_are_validated_and_named(field: str, value: object) -> None:
    with pytest.raises(NotStorable, match=field):
        stored(**{field: value})


def test_a_buyer_key_is_opaque() -> None:
    for buyer in ("a#b", "%23", "*", "ü 😀", "x" * 256):
        assert stored(buyer_key=buyer).buyer_key == buyer


_IDS = st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True)
_CLICKS = st.builds(
    StoredClick,
    click_id=st.from_regex(r"[0-9a-f]{28}", fullmatch=True),
    ts_ms=st.integers(0, MAX_TS_MS),
    buyer_key=st.text(min_size=1, max_size=40),
    promoter_id=_IDS, channel_id=_IDS,
    position_id=st.none() | _IDS, shop_id=st.none() | _IDS, product_id=st.none() | _IDS,
    sub_ids=st.lists(st.text(max_size=100), max_size=5).map(tuple),
    link_exp=st.none() | st.integers(0, 2**40),
)


@settings(max_examples=200)
@given(_CLICKS)
def test_bytes_round_trip(click: StoredClick) -> None:
    data = click.to_bytes()
    assert StoredClick.from_bytes(data) == click
    assert StoredClick.from_bytes(data.decode()) == click


def test_typical_encoding_is_compact() -> None:
    assert len(stored().to_bytes()) < 140


@pytest.mark.parametrize("data", [b"", b"{", b"{}", b"[2]", b'[1,"x",1,"b","p","c",null,null,'
                                  b'null,[],null]', b"[1]"])
def test_corrupt_stored_bytes_raise_click_store_error(data: bytes) -> None:
    with pytest.raises(ClickStoreError):
        StoredClick.from_bytes(data)


def test_api_dict() -> None:
    d = stored().to_dict()
    assert d["sub_ids"] == ["a", "b"]
    assert d["ts_ms"] == TS
    assert set(d) == set(StoredClick.__dataclass_fields__)


# -- windows and retention --------------------------------------------------------


def test_window_bounds() -> None:
    assert window_bounds(1000, 100) == (900, 1000)
    assert window_bounds(50, 100) == (0, 50)
    assert window_bounds(MAX_TS_MS + 10, 100) == (MAX_TS_MS - 90, MAX_TS_MS)
    assert window_bounds(7, 0) == (7, 7)
    for at, window, name in ((-1, 5, "at_ms"), (5, -1, "window_ms"), (True, 5, "at_ms"),
                             (5, 1.5, "window_ms")):
        with pytest.raises(ValueError, match=name):
            window_bounds(at, window)  # type: ignore[arg-type]


def test_retained_drops_clicks_at_or_past_retention() -> None:
    clicks = [stored(ts_ms=TS - age) for age in (0, 99, 100, 101)]
    assert [c.ts_ms for c in retained(clicks, TS, 100)] == [TS, TS - 99]


# -- keys -------------------------------------------------------------------------


def test_escaping_is_injective_and_hash_free() -> None:
    values = ["a", "a#", "a%23", "a%", "%", "#", "%25", "a#b", "*", "\t", "%09", "\n", "a\nb"]
    escaped = [escape_key_part(v) for v in values]
    assert len(set(escaped)) == len(values)
    assert not any(c in e for e in escaped for c in "#\t\n")


@given(st.text(min_size=1), st.text(min_size=1), st.none() | _IDS, st.none() | _IDS)
def test_no_buyer_and_shop_prefix_overlaps_another(b1: str, b2: str, s1: str | None,
                                                   s2: str | None) -> None:
    p1, p2 = index_prefix(b1, s1), index_prefix(b2, s2)
    if (b1, s1) != (b2, s2):
        assert not p1.startswith(p2)
        assert not p2.startswith(p1)
    assert index_suffix(b1, s1).count("#") == 1


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(0, MAX_TS_MS),
                          st.from_regex(r"[0-9a-f]{28}", fullmatch=True)),
                min_size=2, max_size=20, unique=True))
def test_index_rows_sort_newest_first_then_greatest_id(pairs: list[tuple[int, str]]) -> None:
    clicks = [stored(ts_ms=ts, click_id=cid) for ts, cid in pairs]
    by_key = sorted(clicks, key=index_row_key)
    assert by_key == sorted(clicks, key=lambda c: (c.ts_ms, c.click_id), reverse=True)


@settings(max_examples=200)
@given(st.integers(0, 10_000), st.integers(0, 10_000), st.integers(0, 12_000))
def test_the_latest_range_holds_exactly_the_window(ts: int, at: int, window: int) -> None:
    base = 1_700_000_000_000
    c = stored(ts_ms=base + ts)
    rng = latest_range(c.buyer_key, c.shop_id, base + at, window)
    key = index_row_key(c)
    start, end = rng.start_key, rng.end_key
    assert start is not None
    assert end is not None
    inside = start <= key < end
    assert inside == (base + at - window <= base + ts <= base + at)
    other_shop = index_row_key(replace(c, shop_id="shop-2"))
    assert not start <= other_shop < end


def test_id_rows_spread_writes_and_never_collide_with_index_rows() -> None:
    c = stored(click_id=f"{TS:012x}0123456789abcdef")
    assert id_row_key(c.click_id).startswith(b"c#fedcba98")  # the random bits lead
    assert index_row_key(c).startswith(b"b#")


_ANY = st.none() | st.booleans() | st.integers(-5, MAX_TS_MS + 5) | st.text(max_size=70) \
    | st.sampled_from(["p1", "shop-1", "a#b", "*", "", f"{TS:012x}{'ab' * 8}", "A" * 28])
_FIELD_NAMES = list(StoredClick.__dataclass_fields__)


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(_FIELD_NAMES), _ANY | st.tuples(st.text(max_size=3)),
                       max_size=4))
def test_the_fast_check_agrees_with_the_explained_one(changes: dict[str, object]) -> None:
    from attribution_worker.click_store.base import _explain, _problem

    click = object.__new__(StoredClick)  # bypass __post_init__ to try any values
    for name in _FIELD_NAMES:
        object.__setattr__(click, name, getattr(stored(), name))
    for name, value in changes.items():
        object.__setattr__(click, name, value)
    assert (_problem(click) is None) == (_explain(click) is None)
    assert _problem(click) == _explain(click)
