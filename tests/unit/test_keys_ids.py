"""Key rings (contracts.keys) and identifiers (contracts.ids)."""

from __future__ import annotations

import base64
import re

import pytest

from contracts.ids import click_id_ms, new_click_id, new_visitor_id
from contracts.keys import KeyConfigError, KeyRing, generate_ring

# Chosen so the std base64 spelling has both '+' and '/', the url-safe one '-' and '_'.
SECRET = bytes([0xFB, 0xFF, 0xBF]) * 10 + b"\xfe\x01"
SECRET_2 = bytes(range(32, 64))


def std(secret: bytes, pad: bool = True) -> str:
    text = base64.b64encode(secret).decode()
    return text if pad else text.rstrip("=")


def urlsafe(secret: bytes, pad: bool = True) -> str:
    text = base64.urlsafe_b64encode(secret).decode()
    return text if pad else text.rstrip("=")


def spellings(secret: bytes) -> list[str]:
    """Every way a secret can show up in text: base64 (std/url-safe, padded or not), hex, repr."""
    out = [std(secret), std(secret, False), urlsafe(secret), urlsafe(secret, False),
           secret.hex(), repr(secret)]
    return [s for s in out if s]


def assert_no_secret(text: str, *secrets: bytes) -> None:
    for secret in secrets:
        for spelled in spellings(secret):
            assert spelled not in text, f"secret leaked as {spelled!r}"
        # Any 12-char run of its base64 would already be a leak.
        for spelled in (std(secret, False), urlsafe(secret, False)):
            for i in range(0, len(spelled) - 12, 4):
                assert spelled[i:i + 12] not in text


# ---------------------------------------------------------------- KeyRing.parse formats


def test_secret_fixture_exercises_both_alphabets() -> None:
    assert "+" in std(SECRET)
    assert "/" in std(SECRET)
    assert "-" in urlsafe(SECRET)
    assert "_" in urlsafe(SECRET)
    assert std(SECRET).endswith("=")


@pytest.mark.parametrize(
    "encoded",
    [std(SECRET), std(SECRET, False), urlsafe(SECRET), urlsafe(SECRET, False)],
    ids=["std_padded", "std_unpadded", "urlsafe_padded", "urlsafe_unpadded"],
)
def test_parse_base64_variants(encoded: str) -> None:
    ring = KeyRing.parse(f"k1:{encoded}", what="CPS_X")
    assert ring["k1"] == SECRET
    assert ring.active_kid == "k1"
    assert ring.active_secret == SECRET


def test_parse_whitespace_and_empty_items() -> None:
    text = f"  k2 : {urlsafe(SECRET_2)} ,\n k1:{std(SECRET)}\t, ,"
    ring = KeyRing.parse(text, what="CPS_X")
    assert list(ring) == ["k2", "k1"]
    assert ring["k2"] == SECRET_2
    assert ring["k1"] == SECRET
    assert ring.active_kid == "k2"
    assert len(ring) == 2
    assert "k1" in ring
    assert "k3" not in ring
    assert ring.get("k3") is None


def test_parse_order_is_preserved() -> None:
    ring = KeyRing.parse(f"b:{urlsafe(SECRET)},a:{urlsafe(SECRET_2)},c:{urlsafe(SECRET)}",
                         what="X")
    assert list(ring) == ["b", "a", "c"]
    assert ring.active_kid == "b"


def test_parse_sizes_and_min_size() -> None:
    k16, k24, k20 = b"a" * 16, b"b" * 24, b"c" * 20
    ring = KeyRing.parse(f"x:{urlsafe(k16)},y:{urlsafe(k24)}", what="C", sizes=(16, 24, 32))
    assert ring["x"] == k16
    assert ring["y"] == k24
    with pytest.raises(KeyConfigError, match="20 bytes"):
        KeyRing.parse(f"x:{urlsafe(k20)}", what="C", sizes=(16, 24, 32))
    assert KeyRing.parse(f"x:{urlsafe(k16)}", what="C", min_size=16)["x"] == k16
    with pytest.raises(KeyConfigError, match="at least 32"):
        KeyRing.parse(f"x:{urlsafe(k16)}", what="C")


ERROR_CASES = {
    "missing_colon": f"{urlsafe(SECRET)}",
    "missing_colon_second": f"k1:{urlsafe(SECRET)},{urlsafe(SECRET_2)}",
    "bad_base64_std": f"k1:{std(SECRET)}!!",
    "bad_base64_padding": f"k1:{urlsafe(SECRET, False)}AB",
    "bad_base64_non_ascii": f"k1:{urlsafe(SECRET, False)}é",
    "short_key": f"k1:{urlsafe(SECRET[:31])}",
    "empty_key": "k1:",
    "duplicate_kid": f"k1:{urlsafe(SECRET)},k1:{urlsafe(SECRET_2)}",
    "bad_kid_chars": f"k 1:{urlsafe(SECRET)}",
    "bad_kid_dot": f"k.1:{urlsafe(SECRET)}",
    "bad_kid_unicode": f"é:{urlsafe(SECRET)}",
    "kid_too_long": f"{'k' * 17}:{urlsafe(SECRET)}",
    "empty_kid": f":{urlsafe(SECRET)}",
    "empty": "",
    "only_commas": " , ,",
}


@pytest.mark.parametrize("name", list(ERROR_CASES))
def test_parse_errors_never_leak_the_secret(name: str) -> None:
    with pytest.raises(KeyConfigError) as info:
        KeyRing.parse(ERROR_CASES[name], what="CPS_LINK_KEYS")
    message = str(info.value)
    assert message
    assert_no_secret(message, SECRET, SECRET_2, SECRET[:31])
    assert_no_secret(repr(info.value), SECRET, SECRET_2, SECRET[:31])
    assert isinstance(info.value, ValueError)


def test_parse_error_messages_say_what_is_wrong() -> None:
    def msg(name: str) -> str:
        with pytest.raises(KeyConfigError) as info:
            KeyRing.parse(ERROR_CASES[name], what="W")
        return str(info.value)

    assert "KID:BASE64" in msg("missing_colon")
    assert "entry 2" in msg("missing_colon_second")
    assert "base64" in msg("bad_base64_std")
    assert "31 bytes" in msg("short_key")
    assert "twice" in msg("duplicate_kid")
    # An invalid key id is not echoed: with KID and SECRET swapped it would be the secret.
    assert "entry 1 has an invalid key id" in msg("bad_kid_chars")
    assert "no keys" in msg("empty")


KID_ERRORS = ["duplicate_kid", "bad_kid_chars", "bad_kid_dot", "bad_kid_unicode", "kid_too_long",
              "empty_kid"]


@pytest.mark.parametrize("name", [n for n in ERROR_CASES if n not in KID_ERRORS])
def test_parse_errors_name_the_setting(name: str) -> None:
    with pytest.raises(KeyConfigError, match=r"^CPS_LINK_KEYS: "):
        KeyRing.parse(ERROR_CASES[name], what="CPS_LINK_KEYS")


@pytest.mark.parametrize("name", KID_ERRORS)
def test_kid_errors_name_the_setting(name: str) -> None:
    with pytest.raises(KeyConfigError, match=r"^CPS_LINK_KEYS: "):
        KeyRing.parse(ERROR_CASES[name], what="CPS_LINK_KEYS")


@pytest.mark.parametrize("sep", [";", " ", "|"])
def test_parse_refuses_characters_outside_the_base64_alphabet(sep: str) -> None:
    text = f"k1:{urlsafe(SECRET, False)}{sep}k2:{urlsafe(SECRET_2, False)}"
    with pytest.raises(KeyConfigError):
        KeyRing.parse(text, what="CPS_LINK_KEYS")


def test_constructor_validation() -> None:
    with pytest.raises(KeyConfigError):
        KeyRing(())
    with pytest.raises(KeyConfigError, match="twice"):
        KeyRing((("a", SECRET), ("a", SECRET_2)))
    with pytest.raises(KeyConfigError, match="key id"):
        KeyRing((("a/b", SECRET),))


# ---------------------------------------------------------------- secrets never printed


def test_repr_and_str_hold_only_key_ids() -> None:
    ring = KeyRing.parse(f"k2:{urlsafe(SECRET)},k1:{std(SECRET_2)}", what="X")
    for text in (repr(ring), str(ring), f"{ring}", f"{ring!r}", repr([ring]),
                 repr({"ring": ring}), "%s" % (ring,)):  # noqa: UP031
        assert "k2" in text
        assert "k1" in text
        assert_no_secret(text, SECRET, SECRET_2)
    assert repr(ring) == "KeyRing(kids=['k2', 'k1'])"


def test_generated_ring_repr_holds_no_secret() -> None:
    ring = generate_ring(("a", "b"))
    assert_no_secret(repr(ring) + str(ring), *(ring[k] for k in ring))


# ---------------------------------------------------------------- generate_ring / to_text


def test_generate_ring_and_to_text_round_trip() -> None:
    ring = generate_ring(("new", "old"), size=48)
    assert list(ring) == ["new", "old"]
    assert all(len(ring[k]) == 48 for k in ring)
    assert ring["new"] != ring["old"]
    text = ring.to_text()
    assert re.fullmatch(r"new:[A-Za-z0-9_-]{64},old:[A-Za-z0-9_-]{64}", text)
    again = KeyRing.parse(text, what="X")
    assert again == ring
    assert list(again) == list(ring)
    assert all(again[k] == ring[k] for k in ring)


@pytest.mark.parametrize("size", [16, 24, 31, 32, 33, 64])
def test_to_text_round_trips_every_size(size: int) -> None:
    ring = generate_ring(("k",), size=size)
    text = ring.to_text()
    assert "=" not in text
    assert KeyRing.parse(text, what="X", min_size=16)["k"] == ring["k"]


def test_generate_ring_defaults_and_randomness() -> None:
    a, b = generate_ring(), generate_ring()
    assert list(a) == ["k1"]
    assert len(a["k1"]) == 32
    assert a["k1"] != b["k1"]


# ---------------------------------------------------------------- click ids

CLICK_ID = re.compile(r"[0-9a-f]{28}")


def test_click_id_shape() -> None:
    for _ in range(100):
        assert CLICK_ID.fullmatch(new_click_id())
    assert new_click_id(0).startswith("0" * 12)
    assert CLICK_ID.fullmatch(new_click_id(2**48 - 1))
    assert new_click_id(2**48 - 1).startswith("f" * 12)


@pytest.mark.parametrize("ms", [0, 1, 1_720_000_000_123, 2**40, 2**48 - 1])
def test_click_id_ms_round_trip(ms: int) -> None:
    assert click_id_ms(new_click_id(ms)) == ms


def test_click_id_ms_of_default_is_now() -> None:
    import time

    before = time.time_ns() // 1_000_000
    cid = new_click_id()
    after = time.time_ns() // 1_000_000
    assert before <= click_id_ms(cid) <= after


def test_click_ids_sort_by_time() -> None:
    times = [1_700_000_000_000 + i * 7 for i in range(500)]
    times += [2**32 - 1, 2**32, 2**40 - 1, 2**40]
    times.sort()
    ids = [new_click_id(t) for t in times]
    assert sorted(ids) == ids
    # Sub-millisecond: ids minted in the same ms share the prefix and differ in the suffix.
    same = [new_click_id(5) for _ in range(50)]
    assert len({c[:12] for c in same}) == 1
    assert len(set(same)) == 50
    assert all(c < new_click_id(6) for c in same)


def test_100000_click_ids_are_unique() -> None:
    ids = {new_click_id(1_700_000_000_000) for _ in range(100_000)}
    assert len(ids) == 100_000


# ---------------------------------------------------------------- visitor ids

VISITOR_ID = re.compile(r"[A-Za-z0-9_-]{22}")


def test_visitor_id_shape_and_uniqueness() -> None:
    ids = [new_visitor_id() for _ in range(20_000)]
    assert all(VISITOR_ID.fullmatch(v) for v in ids)
    assert len(set(ids)) == len(ids)
    # 22 chars of base64 carry 132 bits, the first 128 of which are random.
    raw = base64.urlsafe_b64decode(ids[0] + "==")
    assert len(raw) == 16
