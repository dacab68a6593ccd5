"""Click schema (contracts.clicks), record batches (contracts.records), topics and partitioner."""

from __future__ import annotations

import base64
import random
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import topics
from contracts.clicks import SCHEMA_VERSION, ClickEvent, SchemaError, Verdict, record_key
from contracts.records import BatchFormatError, decode_batch, encode_batch
from contracts.topics import murmur2, partition_for

VALID = ClickEvent(
    click_id="0190a1b2c3d4e5f60718293a4b5c", ts=1_720_000_000_123, verdict=Verdict.VALID,
    reason="ok", buyer_key="VISITOR_id-0123456789a", ip="203.0.113.7",
    user_agent="Mozilla/5.0", referer="https://live.example/room/1", promoter_id="prom1",
    channel_id="chan1", position_id="pos1", shop_id="shop1", product_id="prod1",
    sub_ids=("a b", "", "ü"), target="https://shop.example.com/x", link_sig="ab" * 32,
    link_kid="k1", link_exp=1_800_000_000)
MALFORMED = ClickEvent(
    click_id="0190a1b2c3d4e5f60718293a4b5d", ts=1_720_000_000_124, verdict=Verdict.MALFORMED,
    reason="invalid percent-encoding", buyer_key="", ip="::1", user_agent="", referer="",
    raw_query="p=%zz")


def as_dict(event: ClickEvent) -> dict[str, Any]:
    return orjson.loads(event.to_json())  # type: ignore[no-any-return]


# ---------------------------------------------------------------- ClickEvent


@pytest.mark.parametrize("event", [VALID, MALFORMED], ids=["valid", "malformed"])
def test_click_round_trip(event: ClickEvent) -> None:
    data = event.to_json()
    assert isinstance(data, bytes)
    back = ClickEvent.from_json(data)
    assert back == event
    assert isinstance(back.verdict, Verdict)
    assert isinstance(back.sub_ids, tuple)
    assert ClickEvent.from_json(data.decode()) == event  # str input too


def test_click_json_shape() -> None:
    d = as_dict(VALID)
    assert d["version"] == SCHEMA_VERSION == 1
    assert d["verdict"] == "valid"
    assert d["sub_ids"] == ["a b", "", "ü"]
    assert set(d) == set(ClickEvent.__dataclass_fields__)
    m = as_dict(MALFORMED)
    assert m["promoter_id"] is None
    assert m["link_exp"] is None


def test_billable_only_when_valid() -> None:
    assert VALID.billable
    for verdict in Verdict:
        event = ClickEvent(click_id="c", ts=1, verdict=verdict, reason="r", buyer_key="b",
                           ip="i", user_agent="u", referer="", promoter_id="p")
        assert event.billable is (verdict is Verdict.VALID)


def test_spec_verdicts_exist() -> None:
    for name in ("valid", "expired", "bot", "duplicate", "rate_limited"):
        assert Verdict(name).value == name


@pytest.mark.parametrize("verdict", [v for v in Verdict if v is not Verdict.VALID])
def test_non_valid_clicks_may_lack_buyer_and_promoter(verdict: Verdict) -> None:
    d = as_dict(MALFORMED) | {"verdict": verdict.value}
    assert ClickEvent.from_json(orjson.dumps(d)).verdict is verdict


def _bad(**changes: Any) -> bytes:
    d = as_dict(VALID)
    for k, v in changes.items():
        if v is _DROP:
            d.pop(k)
        else:
            d[k] = v
    return orjson.dumps(d)


_DROP = object()

BAD_RECORDS: dict[str, bytes | str] = {
    "not_json": b"{not json",
    "empty": b"",
    "not_utf8": b"\xff\xfe",
    "array": b"[1, 2]",
    "string": b'"click"',
    "null": b"null",
    "number": b"1",
    "version_2": _bad(version=2),
    "version_0": _bad(version=0),
    "version_string": _bad(version="1"),
    "version_missing": _bad(version=_DROP),
    "unknown_field": _bad(extra=1),
    "bad_verdict": _bad(verdict="great"),
    "verdict_upper": _bad(verdict="VALID"),
    "verdict_null": _bad(verdict=None),
    "verdict_list": _bad(verdict=["valid"]),
    "verdict_missing": _bad(verdict=_DROP),
    "click_id_int": _bad(click_id=1),
    "click_id_missing": _bad(click_id=_DROP),
    "reason_null": _bad(reason=None),
    "ip_missing": _bad(ip=_DROP),
    "user_agent_int": _bad(user_agent=5),
    "referer_list": _bad(referer=[]),
    "ts_string": _bad(ts="1720000000123"),
    "ts_float": _bad(ts=1.5),
    "ts_bool": _bad(ts=True),
    "ts_null": _bad(ts=None),
    "ts_missing": _bad(ts=_DROP),
    "promoter_int": _bad(promoter_id=7),
    "target_dict": _bad(target={}),
    "link_exp_string": _bad(link_exp="1800000000"),
    "link_exp_float": _bad(link_exp=1.5),
    "sub_ids_string": _bad(sub_ids="a"),
    "sub_ids_ints": _bad(sub_ids=[1, 2]),
    "sub_ids_null": _bad(sub_ids=None),
    "valid_without_buyer_key": _bad(buyer_key=""),
    "valid_without_buyer_key_null": _bad(buyer_key=None),
    "valid_without_promoter": _bad(promoter_id=None),
    "valid_without_promoter_empty": _bad(promoter_id=""),
}


@pytest.mark.parametrize("name", list(BAD_RECORDS))
def test_from_json_rejects(name: str) -> None:
    with pytest.raises(SchemaError) as info:
        ClickEvent.from_json(BAD_RECORDS[name])
    assert str(info.value)


def test_schema_error_messages() -> None:
    def msg(name: str) -> str:
        with pytest.raises(SchemaError) as info:
            ClickEvent.from_json(BAD_RECORDS[name])
        return str(info.value)

    assert "version" in msg("version_2")
    assert "extra" in msg("unknown_field")
    assert "verdict" in msg("bad_verdict")
    assert "'ts'" in msg("ts_string")
    assert "buyer_key" in msg("valid_without_buyer_key")
    assert "sub_ids" in msg("sub_ids_ints")


@pytest.mark.parametrize("change", [{"version": True}, {"version": 1.0}, {"link_exp": True}],
                         ids=["version_true", "version_float", "link_exp_true"])
def test_from_json_rejects_bool_and_float_lookalikes(change: dict[str, Any]) -> None:
    with pytest.raises(SchemaError):
        ClickEvent.from_json(_bad(**change))


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
                     | st.floats(allow_nan=False) | st.text(max_size=10),
                     lambda kids: st.lists(kids, max_size=3)
                     | st.dictionaries(st.text(max_size=5), kids, max_size=3), max_leaves=6)


@settings(max_examples=300, deadline=None, database=None)
@given(st.dictionaries(st.sampled_from(sorted(ClickEvent.__dataclass_fields__)), _JSON),
       st.booleans())
def test_property_from_json_raises_only_schema_error(fields: dict[str, Any], base: bool) -> None:
    obj = (as_dict(VALID) | fields) if base else fields
    try:
        event = ClickEvent.from_json(orjson.dumps(obj))
    except SchemaError:
        return
    # Whatever is accepted round-trips.
    assert ClickEvent.from_json(event.to_json()) == event


_TEXT = st.text(max_size=20)
_OPT = st.none() | _TEXT


@st.composite
def click_events(draw: st.DrawFn) -> ClickEvent:
    verdict = draw(st.sampled_from(list(Verdict)))
    valid = verdict is Verdict.VALID
    return ClickEvent(
        click_id=draw(_TEXT), ts=draw(st.integers(0, 2**53)), verdict=verdict,
        reason=draw(_TEXT), buyer_key=draw(_TEXT.filter(bool) if valid else _TEXT),
        ip=draw(_TEXT), user_agent=draw(_TEXT), referer=draw(_TEXT),
        promoter_id=draw(_TEXT.filter(bool) if valid else _OPT), channel_id=draw(_OPT),
        position_id=draw(_OPT), shop_id=draw(_OPT), product_id=draw(_OPT),
        sub_ids=tuple(draw(st.lists(_TEXT, max_size=5))), target=draw(_OPT),
        link_sig=draw(_OPT), link_kid=draw(_OPT),
        link_exp=draw(st.none() | st.integers(0, 10**12)), raw_query=draw(_OPT))


@settings(max_examples=200, deadline=None, database=None)
@given(click_events())
def test_property_click_round_trip(event: ClickEvent) -> None:
    assert ClickEvent.from_json(event.to_json()) == event


def test_record_key() -> None:
    assert record_key("VISITOR") == b"VISITOR"
    assert record_key("ü") == "ü".encode()
    assert record_key("") is None


# ---------------------------------------------------------------- record batches

_URLSAFE = st.binary(min_size=1, max_size=30).map(
    lambda b: base64.urlsafe_b64encode(b).rstrip(b"="))
_RECORD = st.tuples(st.integers(0, 2**63 - 1), st.none() | _URLSAFE,
                    st.text().map(orjson.dumps))


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(_RECORD, max_size=20))
def test_property_batch_round_trip(records: list[tuple[int, bytes | None, bytes]]) -> None:
    data = encode_batch(records)
    assert decode_batch(data) == records
    assert data.count(b"\n") == len(records)


def test_batch_round_trip_real_clicks() -> None:
    records = [(VALID.ts, record_key(VALID.buyer_key), VALID.to_json()),
               (MALFORMED.ts, record_key(MALFORMED.buyer_key), MALFORMED.to_json())]
    data = encode_batch(records)
    assert decode_batch(data) == records
    assert [ClickEvent.from_json(v) for _, _, v in decode_batch(data)] == [VALID, MALFORMED]


def test_batch_wire_form() -> None:
    assert encode_batch([(5, b"k", b"{}"), (6, None, b"1")]) == b"5\tk\t{}\n6\t\t1\n"
    assert encode_batch([]) == b""
    assert decode_batch(b"") == []


def test_empty_key_is_no_key() -> None:
    # Documented: an empty KEY means no key (record_key never produces b"").
    assert decode_batch(encode_batch([(1, b"", b"{}")])) == [(1, None, b"{}")]


@pytest.mark.parametrize(
    "record",
    [(1, None, b"a\tb"), (1, None, b"a\nb"), (1, None, b"\n"), (1, b"k\t", b"{}"),
     (1, b"k\n", b"{}"), (1, b"\t", b"{}")],
)
def test_encode_refuses_raw_tabs_and_newlines(record: tuple[int, bytes | None, bytes]) -> None:
    with pytest.raises(BatchFormatError):
        encode_batch([(0, None, b"{}"), record])


@pytest.mark.parametrize("record", [(1, None, b""), (-1, None, b"{}")], ids=["empty", "neg_ts"])
def test_encode_refuses_what_decode_cannot_read(record: tuple[int, bytes | None, bytes]) -> None:
    try:
        data = encode_batch([record])
    except BatchFormatError:
        return
    assert decode_batch(data) == [record]


GOOD_BATCH = encode_batch([(1, b"a", b'{"x":1}'), (2, None, b'"y"'), (3, b"c", b"[]")])


@pytest.mark.parametrize(
    "data",
    [
        GOOD_BATCH[:-1],  # torn: no final newline
        GOOD_BATCH[:-5],
        GOOD_BATCH[:7],
        b"\n",
        b"\n\n",
        GOOD_BATCH + b"\n",
        b"1\ta\n",  # one separator
        b"1\n",
        b"1\ta\t\n",  # empty value
        b"x\ta\t{}\n",  # non-numeric ts
        b"-1\ta\t{}\n",
        b"1.5\ta\t{}\n",
        b"\ta\t{}\n",
        b" 1\ta\t{}\n",
        "\u0661\ta\t{}\n".encode(),  # non-ASCII digit
        GOOD_BATCH.replace(b"\t", b" ", 1),
        b"garbage",
        b"\x00\x01\x02\n",
    ],
)
def test_decode_rejects_torn_or_garbled(data: bytes) -> None:
    with pytest.raises(BatchFormatError):
        decode_batch(data)


def test_decode_error_says_where() -> None:
    with pytest.raises(BatchFormatError, match="line 2"):
        decode_batch(b"1\ta\t{}\nbroken\n")
    with pytest.raises(BatchFormatError, match="newline"):
        decode_batch(b"1\ta\t{}")


def test_value_may_hold_tabs_after_the_second_separator_only_via_decode() -> None:
    # decode splits on the first two tabs only; the rest belongs to the value.
    assert decode_batch(b"1\tk\tv\tw\n") == [(1, b"k", b"v\tw")]


# ---------------------------------------------------------------- topics and partitioner


def test_topic_names() -> None:
    assert topics.CLICKS_TOPIC == "cps.clicks.v1"
    assert topics.ORDERS_TOPIC == "cps.orders.v1"
    assert topics.CLICK_FALLBACK_STREAM != topics.CLICK_FALLBACK_PENDING
    assert topics.CLICK_FALLBACK_GROUP


@pytest.mark.parametrize(
    ("key", "partition"),
    # Partitions out of 1000 that Kafka's Java default partitioner picks (the compatibility
    # vectors kafka-python and aiokafka test against).
    [(b"", 681), (b"a", 524), (b"ab", 434), (b"abc", 107), (b"123456789", 566), (b"\x00 ", 742)],
)
def test_partition_for_java_compatibility_vectors(key: bytes, partition: int) -> None:
    assert partition_for(key, 1000) == partition
    assert murmur2(key) == aiokafka_murmur2(key)


@settings(max_examples=400, deadline=None, database=None)
@given(st.integers(0, 64).flatmap(lambda n: st.binary(min_size=n, max_size=n)))
def test_property_murmur2_matches_aiokafka(data: bytes) -> None:
    ours = murmur2(data)
    assert 0 <= ours <= 0xFFFFFFFF
    assert ours == aiokafka_murmur2(data)


def test_murmur2_matches_aiokafka_for_every_length() -> None:
    rng = random.Random(1)
    for n in range(65):
        for _ in range(5):
            data = bytes(rng.randrange(256) for _ in range(n))
            assert murmur2(data) == aiokafka_murmur2(data)


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=64), st.integers(1, 1024))
def test_property_partition_for_matches_default_partitioner(key: bytes, n: int) -> None:
    partitions = list(range(n))
    expected = DefaultPartitioner()(key, partitions, partitions)
    assert partition_for(key, n) == expected
    assert 0 <= partition_for(key, n) < n


def test_partition_for_buyer_keys() -> None:
    for buyer in ("VISITOR_id-0123456789a", "device:42", "ü"):
        key = record_key(buyer)
        assert key is not None
        for n in (1, 3, 12, 64):
            parts = list(range(n))
            assert partition_for(key, n) == DefaultPartitioner()(key, parts, parts)


def test_partitioner_uses_the_c_murmur2() -> None:
    """The pure-Python hash is the reference; the hot path must run the C one."""
    import contracts.topics as topics

    assert topics._c_murmur2 is not None
    for key in (b"", b"a", b"buyer-1", b"vvvvvvvvvvvvvvvvvvvvvv", bytes(range(200))):
        assert topics._c_murmur2(key, topics._SEED) == topics.murmur2(key)
