"""The sealed attribution cookie (contracts.cookie) and the fork-safe nonce pool (contracts.ids)."""

from __future__ import annotations

import base64
import os
import sys

import orjson
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.cookie import (
    AES_KEY_SIZES,
    MAX_SEALED_LEN,
    PAYLOAD_VERSION,
    Attribution,
    CookieSealer,
)
from contracts.ids import POOL, RandomPool, new_nonce
from contracts.keys import KeyRing

KEY_A = bytes(range(32))
KEY_B = bytes(range(64, 96))
RING_A = KeyRing((("a", KEY_A),))
ATTR = Attribution(visitor_id="VISITOR_id-0123456789a", promoter_id="prom1", channel_id="chan1",
                   click_id="0190a1b2c3d4e5f60718293a4b5c", click_ms=1_720_000_000_123,
                   window_end_ms=1_721_296_000_123)


def decode_body(value: str) -> tuple[str, bytes]:
    kid, _, body = value.partition(".")
    return kid, base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def encode_body(kid: str, raw: bytes) -> str:
    return kid + "." + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


# ---------------------------------------------------------------- round trip


def test_seal_unseal_round_trip_preserves_every_field() -> None:
    sealer = CookieSealer(RING_A)
    value = sealer.seal(ATTR)
    assert sealer.unseal(value) == ATTR
    # A second sealer built from the same ring (another edge process) reads it too.
    assert CookieSealer(KeyRing((("a", KEY_A),))).unseal(value) == ATTR


def test_wire_form() -> None:
    value = CookieSealer(RING_A).seal(ATTR)
    kid, raw = decode_body(value)
    assert kid == "a"
    assert "=" not in value
    assert set(value.partition(".")[2]) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    # nonce[12] || ciphertext || tag[16], with the documented plaintext and AAD.
    plaintext = AESGCM(KEY_A).decrypt(raw[:12], raw[12:], b"cps-attr-v1|a")
    assert orjson.loads(plaintext) == [PAYLOAD_VERSION, ATTR.visitor_id, ATTR.promoter_id,
                                       ATTR.channel_id, ATTR.click_id, ATTR.click_ms,
                                       ATTR.window_end_ms]
    assert len(raw) == 12 + len(plaintext) + 16
    assert len(value) <= MAX_SEALED_LEN


@settings(max_examples=150, deadline=None, database=None)
@given(st.builds(Attribution, visitor_id=st.text(max_size=40), promoter_id=st.text(max_size=64),
                 channel_id=st.text(max_size=64), click_id=st.text(max_size=40),
                 click_ms=st.integers(0, 2**53), window_end_ms=st.integers(0, 2**53)))
def test_property_round_trip(attr: Attribution) -> None:
    sealer = CookieSealer(RING_A)
    assert sealer.unseal(sealer.seal(attr)) == attr


@pytest.mark.parametrize("size", AES_KEY_SIZES)
def test_every_aes_key_size_works(size: int) -> None:
    sealer = CookieSealer(KeyRing((("k", os.urandom(size)),)))
    assert sealer.unseal(sealer.seal(ATTR)) == ATTR


@pytest.mark.parametrize("size", [0, 1, 15, 17, 31, 33, 64])
def test_sealer_refuses_keys_of_wrong_size(size: int) -> None:
    with pytest.raises(ValueError, match="16, 24 or 32"):
        CookieSealer(KeyRing((("good", KEY_A), ("bad", os.urandom(size)))))


def test_sealer_error_does_not_leak_the_key() -> None:
    bad = b"\x01" * 20
    with pytest.raises(ValueError) as info:  # noqa: PT011
        CookieSealer(KeyRing((("bad", bad),)))
    text = str(info.value)
    assert bad.hex() not in text
    assert base64.urlsafe_b64encode(bad).decode().rstrip("=") not in text


# ---------------------------------------------------------------- tampering


def test_flipping_any_byte_of_the_payload_is_refused() -> None:
    sealer = CookieSealer(RING_A)
    value = sealer.seal(ATTR)
    kid, raw = decode_body(value)
    assert sealer.unseal(encode_body(kid, raw)) == ATTR
    for i in range(len(raw)):
        for mask in (0x01, 0x80, 0xFF):
            tampered = raw[:i] + bytes([raw[i] ^ mask]) + raw[i + 1:]
            assert sealer.unseal(encode_body(kid, tampered)) is None


def test_truncating_or_extending_the_payload_is_refused() -> None:
    sealer = CookieSealer(RING_A)
    value = sealer.seal(ATTR)
    kid, raw = decode_body(value)
    for n in range(len(raw)):
        assert sealer.unseal(encode_body(kid, raw[:n])) is None
    for extra in (b"\x00", b"\x00" * 16, os.urandom(3)):
        assert sealer.unseal(encode_body(kid, raw + extra)) is None
        assert sealer.unseal(encode_body(kid, extra + raw)) is None
    for n in range(len(value)):
        assert sealer.unseal(value[:n]) is None
    for suffix in ("A", "AA", "AAA", "AAAA", "x", ".", ".a"):
        assert sealer.unseal(value + suffix) is None


def test_kid_prefix_tampering_is_refused() -> None:
    ring = KeyRing((("a", KEY_A), ("b", KEY_B)))
    sealer = CookieSealer(ring)
    value = sealer.seal(ATTR)
    body = value.partition(".")[2]
    for label in ("b", "A", "", "a ", " a", "aa", "c", "a.a"):
        assert sealer.unseal(f"{label}.{body}") is None
    assert sealer.unseal(body) is None  # no kid at all


def test_swapping_bodies_between_kids_is_refused() -> None:
    ring_ab = KeyRing((("a", KEY_A), ("b", KEY_B)))
    ring_ba = KeyRing((("b", KEY_B), ("a", KEY_A)))
    under_a = CookieSealer(ring_ab).seal(ATTR)
    under_b = CookieSealer(ring_ba).seal(ATTR)
    reader = CookieSealer(ring_ab)
    assert reader.unseal(under_a) == ATTR
    assert reader.unseal(under_b) == ATTR
    body_a, body_b = under_a.partition(".")[2], under_b.partition(".")[2]
    assert reader.unseal(f"b.{body_a}") is None
    assert reader.unseal(f"a.{body_b}") is None


def test_aad_binds_the_kid_even_under_the_same_key_bytes() -> None:
    ring = KeyRing((("a", KEY_A), ("b", KEY_A)))  # same secret under two ids
    sealer = CookieSealer(ring)
    value = sealer.seal(ATTR)
    assert value.startswith("a.")
    assert sealer.unseal(value) == ATTR
    relabelled = "b." + value.partition(".")[2]
    assert sealer.unseal(relabelled) is None


def test_forged_payloads_under_the_right_key_but_wrong_aad_or_version_are_refused() -> None:
    sealer = CookieSealer(RING_A)
    cipher = AESGCM(KEY_A)
    good = [PAYLOAD_VERSION, "v", "p", "c", "id", 1, 2]

    def forge(payload: bytes, aad: bytes = b"cps-attr-v1|a") -> str:
        nonce = os.urandom(12)
        return encode_body("a", nonce + cipher.encrypt(nonce, payload, aad))

    assert sealer.unseal(forge(orjson.dumps(good))) == Attribution("v", "p", "c", "id", 1, 2)
    assert sealer.unseal(forge(orjson.dumps(good), aad=b"")) is None
    assert sealer.unseal(forge(orjson.dumps(good), aad=b"cps-attr-v1|b")) is None
    assert sealer.unseal(forge(orjson.dumps(good), aad=b"cps-attr-v2|a")) is None
    for payload in ([2, *good[1:]], [0, *good[1:]], good[:-1], [*good, 3], {"v": 1}, "x", 1,
                    None):
        assert sealer.unseal(forge(orjson.dumps(payload))) is None
    assert sealer.unseal(forge(b"not json")) is None


@pytest.mark.parametrize(
    "value",
    ["", ".", "a", "a.", ".AAAA", "a.!!!!", "a.????", "a.%%%%", "a.\x00", "a.é", "a.A",
     "a." + "A" * 10, "a." + "A" * 40, "a." + "_" * 40, "b." + "A" * 60, "é.AAAA",
     "a." + "A" * (MAX_SEALED_LEN - 2), "a." + "A" * (MAX_SEALED_LEN * 4), "\x00" * 5000],
    ids=lambda v: repr(v[:12]) + f"/{len(v)}",
)
def test_garbage_is_refused_without_raising(value: str) -> None:
    assert CookieSealer(RING_A).unseal(value) is None


def test_oversized_values_are_refused_before_decoding() -> None:
    sealer = CookieSealer(RING_A)
    # A genuinely sealed value that happens to be longer than the limit is still refused.
    big = Attribution("v" * 400, "p" * 200, "c" * 200, "x", 1, 2)
    value = sealer.seal(big)
    assert len(value) > MAX_SEALED_LEN
    assert sealer.unseal(value) is None
    small = Attribution("v" * 100, "p", "c", "x", 1, 2)
    assert len(sealer.seal(small)) <= MAX_SEALED_LEN
    assert sealer.unseal(sealer.seal(small)) == small


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(max_size=1500))
def test_property_unseal_never_raises(value: str) -> None:
    sealer = CookieSealer(RING_A)
    assert sealer.unseal(value) is None
    assert sealer.unseal("a." + value) is None


@pytest.mark.parametrize("variant", ["insert_bangs", "std_alphabet", "padding", "whitespace"])
def test_only_the_canonical_spelling_unseals(variant: str) -> None:
    sealer = CookieSealer(RING_A)
    value = sealer.seal(ATTR)
    while not ("-" in value or "_" in value):  # make sure the std-alphabet variant differs
        value = sealer.seal(ATTR)
    kid, _, body = value.partition(".")
    changed = {
        "insert_bangs": f"{kid}.{body[:4]}!!!!{body[4:]}",
        "std_alphabet": f"{kid}.{body.replace('-', '+').replace('_', '/')}",
        "padding": f"{value}====",
        "whitespace": f"{kid}.{body[:4]}    {body[4:]}",
    }[variant]
    assert changed != value
    assert sealer.unseal(changed) is None


# ---------------------------------------------------------------- rotation


def test_rotation() -> None:
    old = CookieSealer(KeyRing((("k1", KEY_A),)))
    value = old.seal(ATTR)
    rotated = CookieSealer(KeyRing((("k2", KEY_B), ("k1", KEY_A))))
    assert rotated.unseal(value) == ATTR
    new_value = rotated.seal(ATTR)
    assert new_value.startswith("k2.")
    assert rotated.unseal(new_value) == ATTR
    assert old.unseal(new_value) is None  # the old ring never knew k2
    retired = CookieSealer(KeyRing((("k2", KEY_B),)))
    assert retired.unseal(value) is None
    assert retired.unseal(new_value) == ATTR
    # Same kid, different secret: refused.
    assert CookieSealer(KeyRing((("k1", KEY_B),))).unseal(value) is None


# ---------------------------------------------------------------- nonces


def test_nonces_are_unique_across_10000_seals() -> None:
    sealer = CookieSealer(RING_A)
    nonces = set()
    values = set()
    for _ in range(10_000):
        value = sealer.seal(ATTR)
        values.add(value)
        nonces.add(decode_body(value)[1][:12])
    assert len(nonces) == 10_000
    assert len(values) == 10_000
    assert all(len(n) == 12 for n in nonces)


def test_new_nonce_shape() -> None:
    a, b = new_nonce(), new_nonce()
    assert isinstance(a, bytes)
    assert len(a) == len(b) == 12
    assert a != b


def test_random_pool_hands_out_disjoint_slices_and_refills() -> None:
    pool = RandomPool()
    seen = [pool.take(12) for _ in range(2000)]  # crosses several 8 KiB refills
    assert all(len(s) == 12 for s in seen)
    assert len(set(seen)) == len(seen)
    big = pool.take(20_000)  # larger than a block
    assert len(big) == 20_000
    assert len(pool.take(7)) == 7


def test_random_pool_reset_discards_the_block() -> None:
    pool = RandomPool()
    pool.take(1)
    before = pool._buf  # the rest of the block that a forked child must not reuse
    pool.reset()
    assert pool.take(16) != before[1:17]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="os.fork semantics: Linux only")
def test_forked_child_does_not_reuse_the_parents_random_block() -> None:
    new_nonce()  # make sure the parent holds a partly used block
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_fd)
            os.write(write_fd, new_nonce().hex().encode() + b"\n")
            os.write(write_fd, POOL.take(32).hex().encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 4096):
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    child_nonce_hex, child_more_hex = b"".join(chunks).decode().split("\n")
    parent_nonce = new_nonce()
    parent_more = POOL.take(32)
    assert len(bytes.fromhex(child_nonce_hex)) == 12
    assert bytes.fromhex(child_nonce_hex) != parent_nonce
    assert bytes.fromhex(child_more_hex) != parent_more
