"""Redirect targets: strict syntax, normalization and the host allow-list (contracts.targets)."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.targets import (
    MAX_TARGET_LEN,
    AllowList,
    ParsedTarget,
    TargetError,
    normalize_target,
    parse_target,
)

ALLOW = AllowList(["shop.example.com", "*.example.net", "localhost:8080"])
ALLOW_HTTP = AllowList(["shop.example.com", "*.example.net", "localhost:8080"], allow_http=True)

# Every one of these must be refused by parse_target, normalize_target and AllowList.check.
HOSTILE = [
    "javascript:alert(1)",
    "JavaScript:alert(document.cookie)",
    "javascript://shop.example.com/%0Aalert(1)",
    "data:text/html;base64,PHNjcmlwdD4=",
    "data://shop.example.com/",
    "vbscript:msgbox(1)",
    "vbscript://shop.example.com/",
    "ftp://shop.example.com/",
    "file:///etc/passwd",
    "//evil.com/",
    "//shop.example.com/",
    "/\\evil.com",
    "https:evil.com",
    "https:/evil.com",
    "https:///evil.com",
    "https:////evil.com",
    "https://shop.example.com@evil.com/",
    "https://evil.com@shop.example.com/",
    "https://user:pass@shop.example.com/",
    "https://@shop.example.com/",
    "https://shop.example.com\\@evil.com",
    "https://shop.example.com\\.evil.com/",
    "https:\\\\evil.com",
    "https:\\\\shop.example.com",
    "https://evil.com\\shop.example.com/",
    " https://shop.example.com/",
    "https://shop.example.com/ ",
    "https://shop.exa mple.com/",
    "\thttps://shop.example.com/x\t\x00",
    "https://shop.example.com/\r\nSet-Cookie:%20x=1\x00",
    "https://shop.example.com\r\n.evil.com/",
    "https://shop.exam\tple.com/",
    "https://shop.example.com\x00.evil.com/",
    "https://shop%2Eexample.com/",
    "https://shop%2eexample.com/",
    "https://%73hop.example.com/",
    "https://127.0.0.1/",
    "https://2130706433/",
    "https://[::1]/",
    "https://[2001:db8::1]:443/",
    "https://shop.example.com:0/",
    "https://shop.example.com:65536/",
    "https://shop.example.com:-1/",
    "https://shop.example.com:abc/",
    "https://shop.example.com:443:443/",
    "https://-shop.example.com/",
    "https://shop-.example.com/",
    "https://shop..example.com/",
    "https://.shop.example.com/",
    "https://shop_x.example.com/",
    "https://",
    "https:///",
    "https://:443/",
    "https://?x=1",
    "https://#frag",
    "shop.example.com",
    "",
    "https://shop.example.com/" + "a" * MAX_TARGET_LEN,
    "https://" + "a." * 1100 + "example.com/",
]


# ---------------------------------------------------------------- parse_target


@pytest.mark.parametrize("url", HOSTILE)
def test_parse_target_refuses_hostile_input(url: str) -> None:
    with pytest.raises(TargetError) as info:
        parse_target(url)
    assert str(info.value)


@pytest.mark.parametrize("url", HOSTILE)
def test_allow_list_refuses_hostile_input(url: str) -> None:
    for allow in (ALLOW, ALLOW_HTTP, AllowList(["*.evil.com", "evil.com", "shop.example.com"],
                                               allow_http=True)):
        with pytest.raises(TargetError):
            allow.check(url)


@pytest.mark.parametrize("url", HOSTILE)
def test_normalize_target_refuses_hostile_input(url: str) -> None:
    try:
        out = normalize_target(url)
    except TargetError:
        return
    # The one repair it makes on this table: surrounding whitespace of a typed URL is stripped.
    assert url != url.strip()
    assert out == normalize_target(url.strip())
    assert parse_target(out).host == "shop.example.com"


@pytest.mark.parametrize(
    "char", [" ", "\t", "\n", "\r", "\x00", "\x0b", "\x0c", "\x7f", "\\", "\u00a0", "\u2028"])
@pytest.mark.parametrize("where", ["scheme", "host", "port", "path", "query", "fragment"])
def test_whitespace_and_control_characters_anywhere_are_refused(char: str, where: str) -> None:
    pieces = {"scheme": "https", "host": "shop.example.com", "port": "8443",
              "path": "/a/b", "query": "?x=1", "fragment": "#frag"}
    pieces[where] = pieces[where][:2] + char + pieces[where][2:]
    url = f"{pieces['scheme']}://{pieces['host']}:{pieces['port']}{pieces['path']}" \
          f"{pieces['query']}{pieces['fragment']}"
    with pytest.raises(TargetError):
        parse_target(url)
    with pytest.raises(TargetError):
        AllowList(["shop.example.com:8443"], allow_http=True).check(url)
    if char.isascii():
        # normalize_target strips only the ends; inside the URL these are refused outright.
        with pytest.raises(TargetError):
            normalize_target(url)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://shop.example.com/", ParsedTarget("https", "shop.example.com", None)),
        ("https://shop.example.com", ParsedTarget("https", "shop.example.com", None)),
        ("http://shop.example.com/", ParsedTarget("http", "shop.example.com", None)),
        ("HTTPS://SHOP.Example.COM/Path", ParsedTarget("https", "shop.example.com", None)),
        ("https://shop.example.com:8443/x", ParsedTarget("https", "shop.example.com", 8443)),
        ("https://shop.example.com:443", ParsedTarget("https", "shop.example.com", 443)),
        ("https://shop.example.com?q=@evil.com", ParsedTarget("https", "shop.example.com", None)),
        ("https://shop.example.com#@evil.com", ParsedTarget("https", "shop.example.com", None)),
        ("https://shop.example.com/@evil.com", ParsedTarget("https", "shop.example.com", None)),
        ("https://xn--pple-43d.com/", ParsedTarget("https", "xn--pple-43d.com", None)),
        ("https://localhost:8080/", ParsedTarget("https", "localhost", 8080)),
        ("https://1.2.3.example/", ParsedTarget("https", "1.2.3.example", None)),
        ("https://a-b.c/%20?x=%41#%42", ParsedTarget("https", "a-b.c", None)),
    ],
)
def test_parse_target_accepts_narrow_form(url: str, expected: ParsedTarget) -> None:
    assert parse_target(url) == expected


def test_parse_target_length_boundary() -> None:
    base = "https://shop.example.com/"
    exact = base + "a" * (MAX_TARGET_LEN - len(base))
    assert len(exact) == MAX_TARGET_LEN
    assert parse_target(exact).host == "shop.example.com"
    with pytest.raises(TargetError, match="longer"):
        parse_target(exact + "a")


def test_parse_target_trailing_dot_is_refused() -> None:
    with pytest.raises(TargetError, match="dot"):
        parse_target("https://shop.example.com./")


def test_non_ascii_host_is_refused_by_parse_target() -> None:
    with pytest.raises(TargetError):
        parse_target("https://\u0430pple.com/")  # Cyrillic small a (U+0430)
    with pytest.raises(TargetError):
        parse_target("https://bücher.de/")


@pytest.mark.parametrize("url", ["https://0x7f000001/", "https://0x7f.0.0.1/",
                                 "https://1.2.3.0x4/"])
def test_parse_target_refuses_numeric_ipv4_forms(url: str) -> None:
    with pytest.raises(TargetError):
        parse_target(url)


# ---------------------------------------------------------------- normalize_target


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://shop.example.com", "https://shop.example.com/"),
        ("HTTPS://Shop.Example.COM/Path", "https://shop.example.com/Path"),
        ("https://shop.example.com./x", "https://shop.example.com/x"),
        ("https://shop.example.com:443/x", "https://shop.example.com/x"),
        ("http://shop.example.com:80/x", "http://shop.example.com/x"),
        ("https://shop.example.com:80/x", "https://shop.example.com:80/x"),
        ("https://shop.example.com:8443/x", "https://shop.example.com:8443/x"),
        ("https://bücher.de/", "https://xn--bcher-kva.de/"),
        ("https://BÜCHER.de/", "https://xn--bcher-kva.de/"),
        ("https://\u0430pple.com/", "https://xn--pple-43d.com/"),
        ("https://例え.jp/", "https://xn--r8jz45g.jp/"),
        ("https://shop.example.com/ü?ä=ö#é",
         "https://shop.example.com/%C3%BC?%C3%A4=%C3%B6#%C3%A9"),
        ("https://shop.example.com/a%20b?x=%41", "https://shop.example.com/a%20b?x=%41"),
        ("https://shop.example.com/<a>\"{}|^`", "https://shop.example.com/%3Ca%3E%22%7B%7D%7C%5E%60"),
        ("  https://shop.example.com/  ", "https://shop.example.com/"),
        ("https://shop.example.com?q=1", "https://shop.example.com/?q=1"),
    ],
)
def test_normalize_target(url: str, expected: str) -> None:
    assert normalize_target(url) == expected
    assert normalize_target(expected) == expected  # idempotent
    parse_target(expected)


def test_homograph_never_matches_the_ascii_entry() -> None:
    allow = AllowList(["apple.com", "*.apple.com"])
    spoofs = ("https://\u0430pple.com/", "https://www.\u0430pple.com/",
              "https://apple.\u0441\u043em/")
    for spoof in spoofs:
        with pytest.raises(TargetError):
            allow.check(spoof)
        normalized = normalize_target(spoof)
        assert "xn--" in normalized
        with pytest.raises(TargetError):
            allow.check(normalized)
    assert allow.check(normalize_target("https://APPLE.com/")).host == "apple.com"


def test_idn_entry_matches_its_punycode() -> None:
    allow = AllowList(["xn--bcher-kva.de"])
    assert allow.check(normalize_target("https://Bücher.de/x")).host == "xn--bcher-kva.de"


def test_normalize_refuses_percent_encoded_host_instead_of_decoding_it() -> None:
    for url in ("https://shop%2Eexample.com/", "https://%73hop.example.com/"):
        with pytest.raises(TargetError):
            normalize_target(url)


@pytest.mark.parametrize("url", ["https://shop.example.com/\x00", "https://shop.example.com\x00"])
def test_normalize_does_not_strip_nul(url: str) -> None:
    with pytest.raises(TargetError):
        normalize_target(url)


def test_normalize_refuses_overlong_result() -> None:
    with pytest.raises(TargetError):
        normalize_target("https://shop.example.com/" + "ü" * 700)  # 6 bytes each once escaped


def test_normalize_invalid_idn_is_refused() -> None:
    with pytest.raises(TargetError):
        normalize_target("https://" + "ü" * 70 + ".com/")


@settings(max_examples=200, deadline=None, database=None)
@given(st.sampled_from(["shop.example.com", "a.example.net", "Bücher.de", "SHOP.example.com."]),
       st.text(max_size=60))
def test_property_normalize_output_always_parses(host: str, tail: str) -> None:
    try:
        out = normalize_target(f"https://{host}/{tail}")
    except TargetError:
        return
    parsed = parse_target(out)
    assert parsed.host == host.rstrip(".").lower().encode("idna").decode()
    assert normalize_target(out) == out


# ---------------------------------------------------------------- AllowList.check


@pytest.mark.parametrize(
    "url",
    [
        "https://shop.example.com/",
        "https://shop.example.com",
        "https://SHOP.Example.COM/x",
        "https://shop.example.com:443/",
        "https://a.example.net/",
        "https://A.Example.NET/",
        "https://a.b.example.net/deep?x=1",
        "https://localhost:8080/",
    ],
)
def test_allowed(url: str) -> None:
    assert ALLOW.check(url) == parse_target(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.net/",  # a wildcard matches subdomains only
        "https://badexample.net/",
        "https://example.net.evil.com/",
        "https://a.example.net.evil.com/",
        "https://shop.example.com.evil.com/",
        "https://evilshop.example.com/",
        "https://sub.shop.example.com/",  # no wildcard for shop.example.com
        "https://example.com/",
        "https://shop.example.co/",
        "https://shop.example.com:8443/",
        "https://shop.example.com:80/",  # not https's default port
        "https://a.example.net:444/",
        "https://localhost/",  # localhost:8080 admits only 8080
        "https://localhost:443/",
        "https://localhost:8081/",
        "http://shop.example.com/",  # plain http is off by default
        "http://a.example.net/",
        "http://localhost:8080/",
        "https://xn--shop-xyz.example.com/",
    ],
)
def test_refused(url: str) -> None:
    with pytest.raises(TargetError):
        ALLOW.check(url)


def test_http_policy() -> None:
    assert ALLOW_HTTP.check("http://shop.example.com/").scheme == "http"
    assert ALLOW_HTTP.check("http://shop.example.com:80/").port == 80
    assert ALLOW_HTTP.check("http://localhost:8080/").port == 8080
    assert ALLOW_HTTP.check("https://shop.example.com/").scheme == "https"
    for url in ("http://shop.example.com:443/", "https://shop.example.com:80/"):
        with pytest.raises(TargetError):
            ALLOW_HTTP.check(url)
    with pytest.raises(TargetError, match="http"):
        ALLOW.check("http://shop.example.com/")


def test_explicit_port_entry() -> None:
    allow = AllowList(["shop.example.com:8443"])
    assert allow.check("https://shop.example.com:8443/").port == 8443
    for url in ("https://shop.example.com/", "https://shop.example.com:443/",
                "https://shop.example.com:8444/"):
        with pytest.raises(TargetError):
            allow.check(url)


def test_wildcard_with_port() -> None:
    allow = AllowList(["*.example.net:8443"])
    assert allow.check("https://a.example.net:8443/").host == "a.example.net"
    for url in ("https://a.example.net/", "https://example.net:8443/"):
        with pytest.raises(TargetError):
            allow.check(url)


def test_entry_with_default_port_admits_the_implicit_port() -> None:
    allow = AllowList(["shop.example.com:443"])
    assert allow.check(normalize_target("https://shop.example.com:443/")).host == \
        "shop.example.com"


def test_mixed_case_entries_and_parse() -> None:
    allow = AllowList.parse(" Shop.Example.COM , *.Example.NET ,, localhost:8080 ")
    assert repr(allow) == \
        "AllowList(['shop.example.com', '*.example.net', 'localhost:8080'], allow_http=False)"
    assert allow.check("https://SHOP.example.com/").host == "shop.example.com"
    assert allow.check("https://x.EXAMPLE.net/").host == "x.example.net"
    assert AllowList.parse("a.com", allow_http=True).allow_http is True


def test_error_names_the_host() -> None:
    with pytest.raises(TargetError, match=r"evil\.example\.org"):
        ALLOW.check("https://evil.example.org/")


@pytest.mark.parametrize(
    "entries",
    [
        [],
        [""],
        [" ", ""],
        ["https://shop.example.com"],
        ["shop.example.com/"],
        ["shop.example.com/path"],
        ["*"],
        ["*."],
        ["*.*.example.com"],
        ["shop.*.com"],
        ["*example.com"],
        ["sho p.com"],
        ["-shop.com"],
        ["shop-.com"],
        ["shop..com"],
        [".shop.com"],
        ["shop.com."],
        ["bücher.de"],
        ["shop_x.com"],
        ["shop.com:port"],
        ["shop.com:"],
        ["shop.com:123456"],
        ["user@shop.com"],
        ["[::1]"],
        ["shop.com:80:80"],
        ["good.com", "bad entry"],
    ],
)
def test_allow_list_constructor_rejects_bad_entries(entries: list[str]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the constructor documents ValueError
        AllowList(entries)


def test_allow_list_parse_rejects_empty_text() -> None:
    for text in ("", " ", ",", " , ,"):
        with pytest.raises(ValueError, match="empty"):
            AllowList.parse(text)


@pytest.mark.parametrize("entry", ["shop.example.com:99999", "shop.example.com:65536",
                                   "shop.example.com:0"])
def test_allow_list_rejects_out_of_range_port(entry: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        AllowList([entry])


def test_allow_list_rejects_tld_wildcard() -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        AllowList(["*.com"])


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(alphabet=string.printable + "\\@:/.%é\u0430", max_size=80))
def test_property_allow_list_accepts_only_listed_hosts(text: str) -> None:
    for url in (text, "https://" + text):
        try:
            target = ALLOW.check(url)
        except TargetError:
            continue
        assert url.isascii()
        assert target.host == "shop.example.com" or target.host.endswith(".example.net") or \
            (target.host, target.port) == ("localhost", 8080)
        assert target.scheme == "https"
