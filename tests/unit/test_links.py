"""Signed promotion links: canonical form, signing, verification verdicts (contracts.links)."""

from __future__ import annotations

import hashlib
import hmac
import random
import string
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.keys import KeyRing
from contracts.links import (
    ID_PATTERN,
    MAX_QUERY_BYTES,
    SIGNATURE_TAG,
    Link,
    LinkCheck,
    LinkError,
    LinkVerdict,
    canonical_query,
    inspect_link,
    mint_link,
    sign_query,
    signature,
    verify_query,
)
from contracts.targets import AllowList, normalize_target
from tests.unit.test_targets import HOSTILE_UNICODE, SMUGGLED_QUERIES, any_target, url_ish

SECRET_1 = bytes(range(32))
SECRET_2 = bytes(range(100, 132))
RING = KeyRing((("k1", SECRET_1),))
ALLOW = AllowList(["shop.example.com", "*.example.net"])
BASE = "https://edge.example/c"
EXP = 2_000_000_000
UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")

V = LinkVerdict


# ---------------------------------------------------------------- helpers


def ref_encode(value: str) -> str:
    """Independent reference of the canonical value encoding (RFC 3986 unreserved kept)."""
    return "".join(
        c if c in UNRESERVED else "".join(f"%{b:02X}" for b in c.encode("utf-8"))
        for c in value
    )


def query_of(url: str) -> str:
    return url.split("?", 1)[1]


def split_pairs(query: str) -> list[tuple[str, str]]:
    out = []
    for part in query.split("&"):
        name, _, value = part.partition("=")
        out.append((name, value))
    return out


def join_pairs(pairs: list[tuple[str, str]]) -> str:
    return "&".join(f"{n}={v}" for n, v in pairs)


def verify(query: str | bytes, ring: KeyRing = RING, allow: AllowList = ALLOW) -> LinkCheck:
    raw = query.encode("ascii") if isinstance(query, str) else query
    return verify_query(raw, ring, allow)


def mint(**overrides: object) -> str:
    kwargs: dict[str, object] = {
        "ring": RING, "promoter_id": "prom1", "channel_id": "chan1",
        "target": "https://shop.example.com/landing?x=1", "expires_at": EXP, "allow": ALLOW,
    }
    kwargs.update(overrides)
    return mint_link(BASE, **kwargs)  # type: ignore[arg-type]


def full_query() -> str:
    """A link that carries every optional field (so every field can be tampered with)."""
    return query_of(mint(position_id="pos1", shop_id="shop1", product_id="prod1",
                         sub_ids=("s1", "s2", "s3", "s4", "s5")))


FULL_LINK = Link(promoter_id="prom1", channel_id="chan1",
                 target="https://shop.example.com/landing?x=1", expires_at=EXP,
                 position_id="pos1", shop_id="shop1", product_id="prod1",
                 sub_ids=("s1", "s2", "s3", "s4", "s5"))


def assert_refused(check: LinkCheck, verdict: LinkVerdict) -> None:
    assert check.verdict is verdict, check
    assert check.verdict is not V.VALID
    assert check.reason
    # link/kid/sig are only set once the signature held.
    assert check.link is None
    assert check.kid is None
    assert check.sig is None


# ---------------------------------------------------------------- known-answer vector


KAT_CANONICAL = (
    b"p=prom-1&ch=chan.2&pos=pos%3A3&shop=shop_4&prod=PROD5"
    b"&sub1=a%20b&sub2=x%2By&sub4=%C3%BC&sub5=~._-"
    b"&t=https%3A%2F%2Fshop.example.com%2Fpath%3Fq%3D1&exp=1700000000&kid=k1"
)
KAT_SIG = "ea81538f1a6699e35a42055778aeecc9482b3d513f3407ac16d8c54425e5c00d"


def test_known_answer_vector() -> None:
    expected_sig = hmac.new(SECRET_1, b"cps-link-v1\n" + KAT_CANONICAL, hashlib.sha256).hexdigest()
    assert expected_sig == KAT_SIG  # pinned: the vector itself must never drift
    assert SIGNATURE_TAG == b"cps-link-v1\n"
    url = mint_link(BASE, ring=RING, promoter_id="prom-1", channel_id="chan.2",
                    position_id="pos:3", shop_id="shop_4", product_id="PROD5",
                    sub_ids=("a b", "x+y", "", "ü", "~._-"),
                    target="https://shop.example.com/path?q=1", expires_at=1_700_000_000,
                    allow=ALLOW)
    assert url == f"{BASE}?{KAT_CANONICAL.decode()}&sig={KAT_SIG}"
    check = inspect_link(url, RING, ALLOW, now=1_699_999_999)
    assert check.verdict is V.VALID
    assert check.sig == KAT_SIG
    assert check.kid == "k1"
    assert check.link == Link(promoter_id="prom-1", channel_id="chan.2",
                              target="https://shop.example.com/path?q=1",
                              expires_at=1_700_000_000, position_id="pos:3", shop_id="shop_4",
                              product_id="PROD5", sub_ids=("a b", "x+y", "", "ü", "~._-"))


def test_canonical_query_and_sign_query_agree_with_mint() -> None:
    link = Link(promoter_id="prom-1", channel_id="chan.2", target="https://shop.example.com/path?q=1",
                expires_at=1_700_000_000, position_id="pos:3", shop_id="shop_4",
                product_id="PROD5", sub_ids=("a b", "x+y", "", "ü", "~._-"))
    assert canonical_query(link, "k1").encode() == KAT_CANONICAL
    assert sign_query(link, RING) == f"{KAT_CANONICAL.decode()}&sig={KAT_SIG}"


def test_canonical_order_with_only_required_fields() -> None:
    q = query_of(mint())
    assert [n for n, _ in split_pairs(q)] == ["p", "ch", "t", "exp", "kid", "sig"]


def test_canonical_order_with_every_field() -> None:
    names = [n for n, _ in split_pairs(full_query())]
    assert names == ["p", "ch", "pos", "shop", "prod", "sub1", "sub2", "sub3", "sub4", "sub5",
                     "t", "exp", "kid", "sig"]


def test_unused_sub_slots_are_omitted_but_positions_kept() -> None:
    q = query_of(mint(sub_ids=("", "b", "", "", "e")))
    assert [n for n, _ in split_pairs(q) if n.startswith("sub")] == ["sub2", "sub5"]
    check = verify(q)
    assert check.verdict is V.VALID
    assert check.link is not None
    assert check.link.sub_ids == ("", "b", "", "", "e")


def test_sig_is_lowercase_hex_of_64_digits() -> None:
    sig = split_pairs(full_query())[-1][1]
    assert len(sig) == 64
    assert set(sig) <= set("0123456789abcdef")


# ---------------------------------------------------------------- value encoding


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("AZaz09-._~", "AZaz09-._~"),
        ("a b", "a%20b"),
        ("a+b", "a%2Bb"),
        ("é", "%C3%A9"),
        ("中文", "%E4%B8%AD%E6%96%87"),
        ("😀", "%F0%9F%98%80"),
        ("a&b=c", "a%26b%3Dc"),
        ("%41", "%2541"),
        ("/?#[]@!$'()*,;:", "%2F%3F%23%5B%5D%40%21%24%27%28%29%2A%2C%3B%3A"),
        ('"<>\\^`{|}', "%22%3C%3E%5C%5E%60%7B%7C%7D"),
    ],
)
def test_sub_id_encoding(value: str, encoded: str) -> None:
    assert ref_encode(value) == encoded  # the reference agrees with the hand-written table
    q = query_of(mint(sub_ids=(value,)))
    assert dict(split_pairs(q))["sub1"] == encoded
    check = verify(q)
    assert check.verdict is V.VALID
    assert check.link is not None
    assert check.link.sub_ids == (value,)


def test_every_printable_ascii_character_encodes_canonically() -> None:
    value = "".join(chr(c) for c in range(0x20, 0x7F))
    q = query_of(mint(sub_ids=(value[:50], value[50:])))
    pairs = dict(split_pairs(q))
    assert pairs["sub1"] == ref_encode(value[:50])
    assert pairs["sub2"] == ref_encode(value[50:])
    # Uppercase hex only.
    for part in q.split("%")[1:]:
        assert part[:2] == part[:2].upper()


def test_target_and_ids_are_encoded() -> None:
    pairs = dict(split_pairs(query_of(mint(promoter_id="a:b.c_d-e", channel_id="X"))))
    assert pairs["p"] == "a%3Ab.c_d-e"
    assert pairs["t"] == ref_encode("https://shop.example.com/landing?x=1")


# ---------------------------------------------------------------- tampering


REQUIRED = ("p", "ch", "t", "exp", "kid", "sig")
OPTIONAL = ("pos", "shop", "prod", "sub1", "sub2", "sub3", "sub4", "sub5")
CHANGED = {
    "p": ("prom2", V.BAD_SIGNATURE),
    "ch": ("chan2", V.BAD_SIGNATURE),
    "pos": ("pos2", V.BAD_SIGNATURE),
    "shop": ("shop2", V.BAD_SIGNATURE),
    "prod": ("prod2", V.BAD_SIGNATURE),
    "sub1": ("x1", V.BAD_SIGNATURE),
    "sub2": ("x2", V.BAD_SIGNATURE),
    "sub3": ("x3", V.BAD_SIGNATURE),
    "sub4": ("x4", V.BAD_SIGNATURE),
    "sub5": ("x5", V.BAD_SIGNATURE),
    "t": (ref_encode("https://shop.example.com/other"), V.BAD_SIGNATURE),
    "exp": (str(EXP + 1), V.BAD_SIGNATURE),
    "kid": ("k9", V.UNKNOWN_KEY),
    "sig": ("0" * 64, V.BAD_SIGNATURE),
}


def test_untampered_full_link_is_valid() -> None:
    check = verify(full_query())
    assert check.verdict is V.VALID
    assert check.link == FULL_LINK


@pytest.mark.parametrize("name", list(CHANGED))
def test_changing_a_field(name: str) -> None:
    new, verdict = CHANGED[name]
    pairs = [(n, new if n == name else v) for n, v in split_pairs(full_query())]
    assert_refused(verify(join_pairs(pairs)), verdict)


@pytest.mark.parametrize("name", [n for n in CHANGED if n not in ("kid", "sig")])
def test_changing_a_field_to_an_empty_value(name: str) -> None:
    pairs = [(n, "" if n == name else v) for n, v in split_pairs(full_query())]
    check = verify(join_pairs(pairs))
    assert check.verdict in (V.BAD_SIGNATURE, V.MALFORMED)


def test_changing_kid_to_another_ring_key_is_bad_signature() -> None:
    ring = KeyRing((("k1", SECRET_1), ("k2", SECRET_2)))
    pairs = [(n, "k2" if n == "kid" else v) for n, v in split_pairs(full_query())]
    assert_refused(verify(join_pairs(pairs), ring=ring), V.BAD_SIGNATURE)


def test_flipping_each_sig_digit() -> None:
    q = full_query()
    sig = q[-64:]
    for i in range(64):
        flipped = sig[:i] + ("0" if sig[i] != "0" else "1") + sig[i + 1:]
        assert_refused(verify(q[:-64] + flipped), V.BAD_SIGNATURE)


@pytest.mark.parametrize("name", REQUIRED)
def test_removing_a_required_field_is_malformed(name: str) -> None:
    pairs = [(n, v) for n, v in split_pairs(full_query()) if n != name]
    check = verify(join_pairs(pairs))
    assert_refused(check, V.MALFORMED)
    assert name in check.reason


@pytest.mark.parametrize("name", OPTIONAL)
def test_removing_an_optional_field_is_bad_signature(name: str) -> None:
    pairs = [(n, v) for n, v in split_pairs(full_query()) if n != name]
    assert_refused(verify(join_pairs(pairs)), V.BAD_SIGNATURE)


@pytest.mark.parametrize("name", OPTIONAL)
def test_adding_an_optional_field_is_bad_signature(name: str) -> None:
    pairs = split_pairs(query_of(mint()))
    pairs.insert(2, (name, "added"))
    assert_refused(verify(join_pairs(pairs)), V.BAD_SIGNATURE)
    # Also in canonical position (before t=) and appended at the end.
    canon = split_pairs(query_of(mint()))
    canon.insert(canon.index(next(p for p in canon if p[0] == "t")), (name, "added"))
    assert_refused(verify(join_pairs(canon)), V.BAD_SIGNATURE)
    assert_refused(verify(query_of(mint()) + f"&{name}=added"), V.BAD_SIGNATURE)


@pytest.mark.parametrize("name", ["sub1", "sub5"])
def test_adding_an_empty_sub_parameter_is_refused(name: str) -> None:
    pairs = split_pairs(query_of(mint()))
    pairs.insert(2, (name, ""))
    assert verify(join_pairs(pairs)).verdict is not V.VALID


@pytest.mark.parametrize("same", [True, False], ids=["same_value", "other_value"])
@pytest.mark.parametrize("name", REQUIRED + OPTIONAL)
def test_duplicating_a_field_is_malformed(name: str, same: bool) -> None:
    pairs = split_pairs(full_query())
    value = dict(pairs)[name]
    extra = value if same else ("1" * 64 if name == "sig" else value + "x")
    i = pairs.index((name, value))
    for variant in ([*pairs[:i + 1], (name, extra), *pairs[i + 1:]],
                    [*pairs, (name, extra)],  # keeps the "&sig=HEX" suffix for sig
                    [(name, extra), *pairs]):
        check = verify(join_pairs(variant))
        assert_refused(check, V.MALFORMED)
        assert "twice" in check.reason


def test_unknown_key_is_reported_for_a_kid_not_in_the_ring() -> None:
    other = KeyRing((("k2", SECRET_2),))
    assert_refused(verify(full_query(), ring=other), V.UNKNOWN_KEY)


def test_same_kid_with_a_different_secret_is_bad_signature() -> None:
    other = KeyRing((("k1", SECRET_2),))
    assert_refused(verify(full_query(), ring=other), V.BAD_SIGNATURE)


# ---------------------------------------------------------------- key rotation


def test_rotation_old_links_stay_valid_while_the_old_key_is_in_the_ring() -> None:
    old_ring = KeyRing((("k1", SECRET_1),))
    rotated = KeyRing((("k2", SECRET_2), ("k1", SECRET_1)))
    old_url = mint(ring=old_ring)
    check = inspect_link(old_url, rotated, ALLOW, now=EXP - 10)
    assert check.verdict is V.VALID
    assert check.kid == "k1"

    new_url = mint(ring=rotated)
    assert dict(split_pairs(query_of(new_url)))["kid"] == "k2"
    check = inspect_link(new_url, rotated, ALLOW, now=EXP - 10)
    assert check.verdict is V.VALID
    assert check.kid == "k2"
    # The new link verifies with k2's secret, not k1's.
    signed = query_of(new_url).rpartition("&sig=")[0].encode()
    assert query_of(new_url).endswith(
        hmac.new(SECRET_2, SIGNATURE_TAG + signed, hashlib.sha256).hexdigest())

    # The old key retired: old links become unknown_key, new ones stay valid.
    retired = KeyRing((("k2", SECRET_2),))
    assert_refused(inspect_link(old_url, retired, ALLOW, now=EXP - 10), V.UNKNOWN_KEY)
    assert inspect_link(new_url, retired, ALLOW, now=EXP - 10).verdict is V.VALID
    # A ring that never knew k2 cannot verify new links.
    assert_refused(inspect_link(new_url, old_ring, ALLOW, now=EXP - 10), V.UNKNOWN_KEY)


def test_mint_always_uses_the_first_key() -> None:
    for ring in (KeyRing((("a", SECRET_1), ("b", SECRET_2))),
                 KeyRing((("b", SECRET_2), ("a", SECRET_1)))):
        assert dict(split_pairs(query_of(mint(ring=ring))))["kid"] == ring.active_kid


# ---------------------------------------------------------------- expiry


def test_expiry_edges() -> None:
    url = mint()
    at = inspect_link(url, RING, ALLOW, now=EXP - 1)
    assert at.verdict is V.VALID
    for now in (EXP, EXP + 0.0, EXP + 1, EXP + 10**6):
        check = inspect_link(url, RING, ALLOW, now=now)
        assert check.verdict is V.EXPIRED
        # Expired but correctly signed: the link is still readable.
        assert check.link == at.link
        assert check.kid == "k1"
        assert check.sig == at.sig
    assert inspect_link(url, RING, ALLOW, now=EXP - 0.001).verdict is V.VALID


def test_verify_query_is_time_independent() -> None:
    q = query_of(mint(expires_at=1))
    check = verify(q)
    assert check.verdict is V.VALID
    assert check.link is not None
    assert check.link.is_expired(1)
    assert not check.link.is_expired(0.999)


def test_expired_and_tampered_is_not_reported_as_expired() -> None:
    q = query_of(mint(expires_at=100))
    tampered = q.replace("p=prom1", "p=prom2")
    assert inspect_link(f"{BASE}?{tampered}", RING, ALLOW, now=10**9).verdict is V.BAD_SIGNATURE


def test_ttl_is_relative_to_now() -> None:
    url = mint(expires_at=None, ttl_seconds=60, now=1_000_000.7)
    assert dict(split_pairs(query_of(url)))["exp"] == "1000060"
    assert inspect_link(url, RING, ALLOW, now=1_000_059).verdict is V.VALID
    assert inspect_link(url, RING, ALLOW, now=1_000_060).verdict is V.EXPIRED


def test_inspect_link_ignores_fragment_and_edge_host() -> None:
    q = query_of(mint())
    for url in (f"https://other-edge.example/x/y?{q}", f"{BASE}?{q}#frag", f"?{q}"):
        assert inspect_link(url, RING, ALLOW, now=0).verdict is V.VALID


def test_inspect_link_refuses_non_ascii_and_missing_query() -> None:
    q = query_of(mint())
    assert_refused(inspect_link(f"{BASE}?{q}é", RING, ALLOW, now=0), V.MALFORMED)
    assert_refused(inspect_link(BASE, RING, ALLOW, now=0), V.MALFORMED)


# ---------------------------------------------------------------- re-encoded links (slow path)


def test_lowercase_hex_escapes_still_verify() -> None:
    q = full_query()
    lowered = q.replace("%3A", "%3a").replace("%2F", "%2f").replace("%3F", "%3f")
    assert lowered != q
    check = verify(lowered)
    assert check.verdict is V.VALID
    assert check.link == FULL_LINK


def test_uppercase_sig_still_verifies_and_reports_lowercase() -> None:
    q = full_query()
    upper = q[:-64] + q[-64:].upper()
    assert upper != q
    check = verify(upper)
    assert check.verdict is V.VALID
    assert check.sig == q[-64:]


def test_escaped_tilde_and_unreserved_still_verify() -> None:
    q = query_of(mint(sub_ids=("a~b",), promoter_id="prom1"))
    assert "a~b" in q
    variant = q.replace("a~b", "a%7Eb").replace("p=prom1", "p=%70rom%31")
    check = verify(variant)
    assert check.verdict is V.VALID
    assert check.link is not None
    assert check.link.sub_ids == ("a~b",)
    assert check.link.promoter_id == "prom1"


def test_space_as_plus_still_verifies() -> None:
    q = query_of(mint(sub_ids=("a b c",)))
    assert "a%20b%20c" in q
    check = verify(q.replace("a%20b%20c", "a+b%20c"))
    assert check.verdict is V.VALID
    assert check.link is not None
    assert check.link.sub_ids == ("a b c",)


def test_a_literal_plus_is_a_space_not_a_plus() -> None:
    # '+' must be %2B; a raw '+' decodes to a space and so changes the signed value.
    q = query_of(mint(sub_ids=("x+y",)))
    assert "x%2By" in q
    assert_refused(verify(q.replace("x%2By", "x+y")), V.BAD_SIGNATURE)


def test_reordered_parameters_still_verify() -> None:
    # The docstring: the slow path "decodes strictly, re-encodes canonically and verifies".
    q = full_query()
    pairs = split_pairs(q)
    rng = random.Random(7)
    for _ in range(20):
        shuffled = pairs[:]
        rng.shuffle(shuffled)
        check = verify(join_pairs(shuffled))
        assert check.verdict is V.VALID
        assert check.link == FULL_LINK
    reversed_q = join_pairs(pairs[::-1])
    assert verify(reversed_q).link == FULL_LINK


def test_reencoded_and_tampered_is_still_refused() -> None:
    q = full_query().replace("%3A", "%3a")
    assert_refused(verify(q.replace("p=prom1", "p=prom2")), V.BAD_SIGNATURE)


# ---------------------------------------------------------------- malformed input


def _with(name: str, value: str) -> str:
    return join_pairs([(n, value if n == name else v) for n, v in split_pairs(full_query())])


MALFORMED_CASES: dict[str, bytes] = {
    "empty": b"",
    "only_ampersand": b"&",
    "no_equals": b"p",
    "trailing_ampersand": (full_query() + "&").encode(),
    "double_ampersand": full_query().replace("&ch=", "&&ch=").encode(),
    "missing_sig": full_query().rpartition("&sig=")[0].encode(),
    "sig_not_hex": _with("sig", "g" * 64).encode(),
    "sig_short": _with("sig", "a" * 63).encode(),
    "sig_long": _with("sig", "a" * 65).encode(),
    "sig_empty": _with("sig", "").encode(),
    "raw_non_ascii": full_query().replace("s1", "s\xe9").encode("latin-1"),
    "raw_utf8": full_query().replace("s1", "é").encode("utf-8"),
    "bad_percent_zz": _with("sub1", "a%zz").encode(),
    "bad_percent_short": _with("sub1", "a%4").encode(),
    "bad_percent_trailing": _with("sub1", "a%").encode(),
    "bad_percent_in_t": _with("t", "https%3A%2F%2Fshop.example.com%2").encode(),
    "invalid_utf8": _with("sub1", "%C3%28").encode(),
    "overlong_utf8": _with("sub1", "%C0%AF").encode(),
    "surrogate_utf8": _with("sub1", "%ED%A0%80").encode(),
    "crlf": _with("sub1", "a%0D%0ASet-Cookie:x").encode(),
    "nul": _with("sub1", "a%00").encode(),
    "del": _with("sub1", "a%7F").encode(),
    "nel": _with("sub1", "a%C2%85").encode(),
    "tab_in_target": _with("t", ref_encode("https://shop.example.com/\t")).encode(),
    "unknown_param": (full_query() + "&utm=1").encode(),
    "unknown_param_first": ("utm=1&" + full_query()).encode(),
    "encoded_param_name": full_query().replace("p=prom1", "%70=prom1").encode(),
    "uppercase_param_name": full_query().replace("p=prom1", "P=prom1").encode(),
    "sub6": (full_query().replace("&t=", "&sub6=x&t=")).encode(),
    "duplicate_param": full_query().replace("&ch=chan1", "&ch=chan1&ch=chan1").encode(),
    "too_long": (full_query().replace("&t=", "&sub1=" + "a" * MAX_QUERY_BYTES + "&t=")).encode(),
    "exp_leading_zero": _with("exp", "0" + str(EXP)).encode(),
    "exp_zero": _with("exp", "0").encode(),
    "exp_plus_sign": _with("exp", "%2B" + str(EXP)).encode(),
    "exp_minus_sign": _with("exp", "-" + str(EXP)).encode(),
    "exp_letters": _with("exp", "2e9").encode(),
    "exp_hex": _with("exp", "0x77359400").encode(),
    "exp_space": _with("exp", "%20" + str(EXP)).encode(),
    "exp_empty": _with("exp", "").encode(),
    "exp_13_digits": _with("exp", "1" * 13).encode(),
    "exp_arabic_digits": _with("exp", ref_encode("٢٠٠٠")).encode(),
    "bad_promoter_id": _with("p", "a%20b").encode(),
    "empty_promoter_id": _with("p", "").encode(),
    "long_promoter_id": _with("p", "a" * 65).encode(),
    "bad_position_id": _with("pos", "a%2Fb").encode(),
    "long_sub_id": _with("sub1", "a" * 101).encode(),
}


@pytest.mark.parametrize("name", list(MALFORMED_CASES))
def test_malformed_input(name: str) -> None:
    check = verify_query(MALFORMED_CASES[name], RING, ALLOW)
    assert_refused(check, V.MALFORMED)


def test_malformed_reasons_say_what_is_wrong() -> None:
    assert "4096" in verify_query(MALFORMED_CASES["too_long"], RING, ALLOW).reason
    assert "non-ASCII" in verify_query(MALFORMED_CASES["raw_utf8"], RING, ALLOW).reason
    assert "percent" in verify_query(MALFORMED_CASES["bad_percent_zz"], RING, ALLOW).reason
    assert "UTF-8" in verify_query(MALFORMED_CASES["invalid_utf8"], RING, ALLOW).reason
    assert "control" in verify_query(MALFORMED_CASES["crlf"], RING, ALLOW).reason
    assert "twice" in verify_query(MALFORMED_CASES["duplicate_param"], RING, ALLOW).reason
    assert "utm" in verify_query(MALFORMED_CASES["unknown_param"], RING, ALLOW).reason
    assert "'sig'" in verify_query(MALFORMED_CASES["missing_sig"], RING, ALLOW).reason
    assert "'sig'" in verify_query(MALFORMED_CASES["sig_short"], RING, ALLOW).reason
    assert "'exp'" in verify_query(MALFORMED_CASES["exp_leading_zero"], RING, ALLOW).reason


def _query_of_length(n: int) -> str:
    """A correctly minted query of exactly ``n`` bytes (n around MAX_QUERY_BYTES)."""
    subs = ("é" * 100,) * 4  # 600 bytes each once encoded
    short = query_of(mint(sub_ids=subs, target="https://shop.example.com/"))
    pad = n - len(short)
    assert pad > 0
    # sign_query, not mint: mint refuses to produce an over-long link.
    link = verify(short).link
    assert link is not None
    q = sign_query(replace(link, target="https://shop.example.com/" + "a" * pad), RING)
    assert len(q) == n
    return q


def test_query_length_limit_boundary() -> None:
    assert verify(_query_of_length(MAX_QUERY_BYTES)).verdict is V.VALID
    assert_refused(verify(_query_of_length(MAX_QUERY_BYTES + 1)), V.MALFORMED)


# ---------------------------------------------------------------- target allow-list


def test_signed_link_to_an_off_list_target_is_target_not_allowed() -> None:
    url = mint(allow=None, target="https://evil.example.org/phish")
    check = inspect_link(url, RING, ALLOW, now=0)
    assert check.verdict is V.TARGET_NOT_ALLOWED
    assert check.link is not None
    assert check.link.target == "https://evil.example.org/phish"
    assert check.kid == "k1"
    assert check.sig == query_of(url)[-64:]
    assert "evil.example.org" in check.reason


def test_signed_link_to_plain_http_depends_on_the_allow_list_policy() -> None:
    url = mint(allow=None, target="http://shop.example.com/")
    assert inspect_link(url, RING, ALLOW, now=0).verdict is V.TARGET_NOT_ALLOWED
    allow_http = AllowList(["shop.example.com"], allow_http=True)
    assert inspect_link(url, RING, allow_http, now=0).verdict is V.VALID


def test_target_not_allowed_beats_expiry_and_needs_a_good_signature() -> None:
    url = mint(allow=None, target="https://evil.example.org/", expires_at=5)
    assert inspect_link(url, RING, ALLOW, now=10).verdict is V.TARGET_NOT_ALLOWED
    tampered = url.replace("p=prom1", "p=prom2")
    assert_refused(inspect_link(tampered, RING, ALLOW, now=0), V.BAD_SIGNATURE)


def test_swapping_the_target_of_a_valid_link_is_refused() -> None:
    q = full_query()
    evil = _with("t", ref_encode("https://evil.example.org/"))
    assert q != evil
    assert_refused(verify(evil), V.BAD_SIGNATURE)


def test_mint_normalizes_the_target() -> None:
    url = mint(target="HTTPS://Shop.Example.COM:443/ü")
    check = verify(query_of(url))
    assert check.link is not None
    assert check.link.target == "https://shop.example.com/%C3%BC"


# ---------------------------------------------------------------- mint refusals


@pytest.mark.parametrize(
    "overrides",
    [
        {"promoter_id": ""},
        {"promoter_id": "a b"},
        {"promoter_id": "a/b"},
        {"promoter_id": "é"},
        {"promoter_id": "a" * 65},
        {"channel_id": ""},
        {"channel_id": "c&h"},
        {"position_id": ""},
        {"position_id": "x?y"},
        {"shop_id": "s s"},
        {"product_id": "p=1"},
        {"sub_ids": ("1", "2", "3", "4", "5", "6")},
        {"sub_ids": ("a", "")},
        {"sub_ids": ("",)},
        {"sub_ids": ("a" * 101,)},
        {"sub_ids": ("a\nb",)},
        {"sub_ids": ("a\x00",)},
        {"sub_ids": ("a\x7f",)},
        {"target": "https://evil.example.org/"},
        {"target": "http://shop.example.com/"},
        {"target": "javascript:alert(1)"},
        {"target": "https://shop.example.com@evil.example.org/"},
        {"target": "//shop.example.com/"},
        {"expires_at": 0},
        {"expires_at": -5},
        {"expires_at": 10**12},
        {"expires_at": None, "ttl_seconds": 0},
        {"expires_at": None, "ttl_seconds": -1},
        {"expires_at": None, "ttl_seconds": None},
    ],
    ids=repr,
)
def test_mint_refuses_bad_input(overrides: dict[str, object]) -> None:
    with pytest.raises(LinkError) as info:
        mint(**overrides)
    assert str(info.value)


@pytest.mark.parametrize(
    "base",
    ["ftp://edge.example/c", "edge.example/c", "/c", "https:///c", "https://edge.example/c?a=1",
     "https://edge.example/c#frag", "javascript://edge.example/c", ""],
)
def test_mint_refuses_bad_base_urls(base: str) -> None:
    with pytest.raises(LinkError):
        mint_link(base, ring=RING, promoter_id="p", channel_id="c",
                  target="https://shop.example.com/", ttl_seconds=60)


@pytest.mark.parametrize("base", ["https://edge.example/c?", "https://edge.example/c#"])
def test_mint_refuses_base_url_with_empty_query_or_fragment(base: str) -> None:
    with pytest.raises(LinkError):
        mint_link(base, ring=RING, promoter_id="p", channel_id="c",
                  target="https://shop.example.com/", ttl_seconds=60)


def _mint_or_verify_valid(**overrides: object) -> None:
    """Minting must either refuse (LinkError) or produce a link the verifier accepts."""
    try:
        url = mint(**overrides)
    except LinkError:
        return
    check = verify_query(query_of(url).encode(), RING, ALLOW)
    assert check.verdict is V.VALID, check.reason


@pytest.mark.parametrize(
    "overrides",
    [{"sub_ids": ("😀" * 100,) * 5},
     {"target": "https://shop.example.com/" + "/" * 2000, "sub_ids": ("é" * 100,) * 3}],
    ids=["long_unicode_sub_ids", "long_target"],
)
def test_mint_never_produces_an_unverifiable_link(overrides: dict[str, object]) -> None:
    _mint_or_verify_valid(**overrides)


def test_mint_refuses_lone_surrogate_with_link_error() -> None:
    with pytest.raises(LinkError):
        mint(sub_ids=("\ud800",))


@pytest.mark.parametrize("char", ["\u2028", "\u202e", "\u200b", "\ufeff"])
def test_mint_refuses_non_printable_sub_ids(char: str) -> None:
    with pytest.raises(LinkError):
        mint(sub_ids=(f"a{char}b",))


@pytest.mark.parametrize("target", HOSTILE_UNICODE)
def test_mint_refuses_hostile_unicode_targets_with_link_error(target: str) -> None:
    # These made urlsplit or quote raise ValueError / UnicodeEncodeError through mint_link.
    with pytest.raises(LinkError) as info:
        mint(target=target)
    assert str(info.value)
    with pytest.raises(LinkError):
        mint(target=target, allow=None)


HOSTILE_BASES = [
    "https://edge.example\uff0fx/c",  # urlsplit: NFKC netloc check
    "https://[/c",
    "https://edge.example]/c",  # urlsplit: invalid IPv6 URL
    "https://[::1/c",
    "https://[0:0:0:0:0:\ufb00\ufb00:127.0.0.1]/c",
    "https://edge.example/c\udcff",  # the link could not be printed or encoded
    "https://edge.example:99999/c",
    "https://edge.example:x/c",
    "https://edge.example:0/c",
    "https://:443/c",
    "https://user@edge.example/c",
    "https://edge.example/c d",
    "https://edge.example/c\n",
    " https://edge.example/c",
    "https://edge.example\\@evil.example/c",
    "https://\u00e9dge.example/c",
]


@pytest.mark.parametrize("base", HOSTILE_BASES)
def test_mint_refuses_hostile_base_urls_with_link_error(base: str) -> None:
    with pytest.raises(LinkError, match="base URL") as info:
        mint_link(base, ring=RING, promoter_id="p", channel_id="c",
                  target="https://shop.example.com/", ttl_seconds=60)
    assert str(info.value).isascii()


@pytest.mark.parametrize("base", ["http://127.0.0.1:8000/c", "http://[::1]:8000/c",
                                  "HTTPS://Edge.Example", "https://edge.example:8443/a/b;c=d"])
def test_mint_accepts_ordinary_base_urls(base: str) -> None:
    url = mint_link(base, ring=RING, promoter_id="p", channel_id="c",
                    target="https://shop.example.com/", ttl_seconds=60)
    assert url.startswith(base + "?p=p&ch=c&t=")


@pytest.mark.parametrize("query", SMUGGLED_QUERIES)
def test_mint_refuses_smuggled_tracking_params(query: str) -> None:
    for allow in (ALLOW, None):
        with pytest.raises(LinkError, match="tracking parameter"):
            mint(target=f"https://shop.example.com/landing?{query}", allow=allow)


def hand_signed(target: str, secret: bytes = SECRET_1, kid: str = "k1") -> bytes:
    """A correctly signed query for ``target``, bypassing mint's checks.

    What a link minted before a check existed looks like, or one from a leaked key.
    """
    signed = canonical_query(Link(promoter_id="prom1", channel_id="chan1", target=target,
                                  expires_at=EXP), kid).encode("ascii")
    return signed + b"&sig=" + signature(secret, signed).hex().encode("ascii")


def test_hand_signed_helper_makes_valid_links() -> None:
    check = verify(hand_signed("https://shop.example.com/landing?x=1&cps_clickid=2"))
    assert check.verdict is V.VALID, check.reason


@pytest.mark.parametrize("query", SMUGGLED_QUERIES)
def test_edge_refuses_signed_links_with_smuggled_tracking_params(query: str) -> None:
    raw = hand_signed(f"https://shop.example.com/landing?{query}")
    check = verify(raw)
    assert check.verdict is V.TARGET_NOT_ALLOWED, check.reason
    assert "tracking parameter" in check.reason
    assert check.link is not None
    assert check.kid == "k1"
    # A re-encoded copy (lowercase escapes: the slow path) gets the same verdict.
    slow = raw.replace(b"%3A", b"%3a")
    assert slow != raw
    assert verify(slow).verdict is V.TARGET_NOT_ALLOWED


def test_expires_at_beats_ttl() -> None:
    url = mint(expires_at=12345, ttl_seconds=60, now=0)
    assert dict(split_pairs(query_of(url)))["exp"] == "12345"


# ---------------------------------------------------------------- property tests

ID = st.from_regex(ID_PATTERN, fullmatch=True)
SUB_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Zl", "Zp")),
                   max_size=20)
PATH = st.text(alphabet=string.ascii_letters + string.digits + "-._~/!$&'()*+,;=:@%é中",
               max_size=40)


@st.composite
def links(draw: st.DrawFn) -> tuple[Link, str]:
    subs = draw(st.lists(SUB_TEXT, max_size=5))
    if subs and not subs[-1]:
        subs[-1] = draw(SUB_TEXT.filter(bool))
    host = draw(st.sampled_from(["shop.example.com", "a.example.net", "x-1.y.example.net"]))
    raw_target = f"https://{host}/{draw(PATH)}"
    target = normalize_target(raw_target)
    link = Link(promoter_id=draw(ID), channel_id=draw(ID), target=target,
                expires_at=draw(st.integers(1, 10**12 - 1)),
                position_id=draw(st.none() | ID), shop_id=draw(st.none() | ID),
                product_id=draw(st.none() | ID), sub_ids=tuple(subs))
    return link, raw_target


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(links())
def test_property_mint_verify_round_trip(pair: tuple[Link, str]) -> None:
    link, raw_target = pair
    url = mint_link(BASE, ring=RING, promoter_id=link.promoter_id, channel_id=link.channel_id,
                    target=raw_target, expires_at=link.expires_at,
                    position_id=link.position_id, shop_id=link.shop_id,
                    product_id=link.product_id, sub_ids=link.sub_ids, allow=ALLOW)
    q = query_of(url)
    assert q == sign_query(link, RING)
    check = verify(q)
    assert check.verdict is V.VALID, check.reason
    assert check.link == link
    assert check.kid == "k1"
    # Every escape uses uppercase hex and everything else is unreserved or a separator.
    assert set(q) <= UNRESERVED | set("%&=0123456789ABCDEF")


SAMPLE_QUERIES = [
    full_query(),
    query_of(mint_link(BASE, ring=RING, promoter_id="prom-1", channel_id="chan.2",
                       position_id="pos:3", shop_id="shop_4", product_id="PROD5",
                       sub_ids=("a b", "x+y", "", "ü", "~._-"),
                       target="https://shop.example.com/path?q=1", expires_at=1_700_000_000)),
]


@settings(max_examples=500, deadline=None, database=None)
@given(st.sampled_from(SAMPLE_QUERIES), st.data())
def test_property_single_byte_change_never_yields_a_different_valid_link(
        query: str, data: st.DataObject) -> None:
    raw = query.encode()
    original = verify(raw)
    assert original.verdict is V.VALID
    pos = data.draw(st.integers(0, len(raw) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != raw[pos]))
    flipped = raw[:pos] + bytes([new]) + raw[pos + 1:]
    check = verify(flipped)
    if check.verdict is V.VALID:
        # The only accepted single-byte changes are equivalent re-encodings: the case of a
        # hex digit in a %XX escape or in sig.  Same link, same signature.
        assert flipped.lower() == raw.lower()
        assert chr(raw[pos]) in "abcdefABCDEF"
        assert check.link == original.link
        assert check.sig == original.sig
    else:
        assert check.link is None


def test_every_single_byte_xor_at_every_position() -> None:
    """Exhaustive companion of the property above: flip each bit of each byte."""
    raw = SAMPLE_QUERIES[0].encode()
    original = verify(raw)
    for pos in range(len(raw)):
        for bit in range(8):
            flipped = raw[:pos] + bytes([raw[pos] ^ (1 << bit)]) + raw[pos + 1:]
            check = verify(flipped)
            if check.verdict is V.VALID:
                assert bit == 5
                assert chr(raw[pos]) in "abcdefABCDEF"
                assert check.link == original.link


@settings(max_examples=400, deadline=None, database=None)
@given(st.binary(max_size=5000))
def test_property_verify_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    check = verify_query(data, RING, ALLOW)
    assert check.verdict is not V.VALID
    assert check.reason


_NAMES = ["p", "ch", "pos", "shop", "prod", "sub1", "sub2", "sub3", "sub4", "sub5", "t", "exp",
          "kid", "sig", "x", ""]
_VALUE = st.text(alphabet="%0123456789abcdefABCDEFzZ+~-._&=é\x00 ", max_size=12)


@settings(max_examples=400, deadline=None, database=None)
@given(st.lists(st.tuples(st.sampled_from(_NAMES), _VALUE), max_size=16),
       st.booleans(), st.booleans())
def test_property_verify_never_raises_on_query_shaped_input(
        pairs: list[tuple[str, str]], with_sig: bool, ascii_only: bool) -> None:
    q = join_pairs(pairs)
    if with_sig:
        q += "&kid=k1&sig=" + "a" * 64
    data = q.encode("ascii", "ignore") if ascii_only else q.encode("utf-8")
    check = verify_query(data, RING, ALLOW)
    assert check.verdict is not V.VALID
    assert isinstance(check.reason, str)
    assert check.reason


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(max_size=300))
def test_property_inspect_link_never_raises(url: str) -> None:
    check = inspect_link(url, RING, ALLOW, now=0)
    assert check.verdict is not V.VALID


# The allow-list of the brief: the apex and its subdomains.
SHOP_ALLOW = AllowList.parse("shop.example.com,*.shop.example.com")


def _mint_is_valid_or_link_error(base: str, target: str) -> None:
    try:
        url = mint_link(base, ring=RING, promoter_id="p", channel_id="c", target=target,
                        expires_at=EXP, allow=SHOP_ALLOW)
    except LinkError:
        return
    assert url.startswith(base + "?")
    check = verify_query(query_of(url).encode("ascii"), RING, SHOP_ALLOW)
    assert check.verdict is V.VALID, check.reason


@settings(max_examples=500, deadline=None, database=None)
@given(any_target())
def test_property_mint_any_target_gives_a_valid_link_or_link_error(target: str) -> None:
    _mint_is_valid_or_link_error(BASE, target)


@settings(max_examples=300, deadline=None, database=None)
@given(st.text() | url_ish() | st.tuples(st.sampled_from(["https://", "http://edge.example"]),
                                         url_ish()).map("".join))
def test_property_mint_any_base_url_gives_a_valid_link_or_link_error(base: str) -> None:
    _mint_is_valid_or_link_error(base, "https://shop.example.com/landing")
