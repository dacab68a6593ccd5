"""The redirect endpoint in-process (edge.redirect): hand-made ASGI scopes, a list as the sink."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Coroutine, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts import links
from contracts.clicks import ClickEvent, Verdict
from contracts.cookie import Attribution, CookieSealer
from contracts.ids import click_id_ms
from contracts.keys import KeyRing, generate_ring
from contracts.links import LinkCheck, mint_link
from contracts.records import Record
from contracts.settings import load_settings
from contracts.targets import TRACKING_PARAMS, AllowList
from edge import redirect, telemetry
from edge.ratelimit import IpRateLimiter
from edge.redirect import LINK_CACHE_GENERATION, MAX_ATTRIBUTION_COOKIES, RedirectEndpoint
from edge.requester import RequesterFilter
from edge.settings import EdgeSettings

LINK_RING = generate_ring(("k1",), 32)
COOKIE_RING = generate_ring(("c1",), 32)
SEALER = CookieSealer(COOKIE_RING)
ALLOW_TEXT = "shop.example.com,*.mall.example"
BASE = "https://edge.example/c"
TARGET = "https://shop.example.com/item/1?sku=9"
PEER = "10.0.0.1"
CHROME = (b"Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
          b"Chrome/120.0.0.0 Mobile Safari/537.36")
WECHAT = (b"Mozilla/5.0 (iPhone; CPU iPhone OS 16_6 like Mac OS X) AppleWebKit/605.1.15 "
          b"(KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.42(0x18002a2c) NetType/WIFI")
WINDOW_MS = 15 * 86400 * 1000


def query_of(url: str) -> bytes:
    return url.split("?", 1)[1].encode("ascii")


def mint(target: str = TARGET, *, ring: KeyRing = LINK_RING, ttl: int | None = 3600,
         expires_at: int | None = None, promoter: str = "P1", channel: str = "douyin",
         **kwargs: Any) -> bytes:
    return query_of(mint_link(BASE, ring=ring, promoter_id=promoter, channel_id=channel,
                              target=target, ttl_seconds=None if expires_at else ttl,
                              expires_at=expires_at, **kwargs))


def make_settings(**overrides: Any) -> EdgeSettings:
    return load_settings(EdgeSettings, link_keys=LINK_RING.to_text(),
                         cookie_keys=COOKIE_RING.to_text(), allowed_target_hosts=ALLOW_TEXT,
                         **overrides)


def run(coro: Coroutine[Any, Any, None]) -> None:
    """Drive the endpoint to completion: it never waits on anything but our recording send."""
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise AssertionError("the endpoint suspended")


@dataclass
class Response:
    messages: list[MutableMapping[str, Any]]
    events: list[Record]

    @property
    def starts(self) -> list[MutableMapping[str, Any]]:
        return [m for m in self.messages if m["type"] == "http.response.start"]

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return list(self.messages[0]["headers"])

    def header(self, name: bytes) -> bytes | None:
        values = [v for k, v in self.headers if k == name]
        assert len(values) <= 1, f"{name!r} repeated"
        return values[0] if values else None

    @property
    def location(self) -> str | None:
        value = self.header(b"location")
        return value.decode("ascii") if value is not None else None

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages
                        if m["type"] == "http.response.body")

    @property
    def record(self) -> Record:
        assert len(self.events) == 1, self.events
        return self.events[0]

    @property
    def event(self) -> ClickEvent:
        return ClickEvent.from_json(self.record[2])

    @property
    def raw_event(self) -> dict[str, Any]:
        obj = orjson.loads(self.record[2])
        assert isinstance(obj, dict)
        return obj

    @property
    def cookie_value(self) -> str | None:
        sc = self.header(b"set-cookie")
        if sc is None:
            return None
        return sc.decode("ascii").split(";", 1)[0].split("=", 1)[1]

    def tracking(self) -> dict[str, str]:
        assert self.location is not None
        return dict(parse_qsl(urlsplit(self.location).query))


def assert_same_answer(first: Response, second: Response) -> None:
    """A duplicate's answer: same headers, and a cookie sealed again around the same content."""
    def without_cookie(r: Response) -> list[tuple[bytes, bytes]]:
        return [(k, v) for k, v in r.headers if k != b"set-cookie"]

    assert without_cookie(second) == without_cookie(first)
    c1, c2 = first.header(b"set-cookie"), second.header(b"set-cookie")
    assert c1 is not None
    assert c2 is not None
    assert c1.split(b";", 1)[1] == c2.split(b";", 1)[1]  # same attributes
    assert first.cookie_value is not None
    assert second.cookie_value is not None
    assert SEALER.unseal(second.cookie_value) == SEALER.unseal(first.cookie_value)


@dataclass
class Harness:
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.settings = make_settings(**self.overrides)
        self.events: list[Record] = []
        self.endpoint = RedirectEndpoint(self.settings, self.events.append)

    def request(self, query: bytes, *, method: str = "GET", ua: bytes | None = CHROME,
                headers: list[tuple[bytes, bytes]] | None = None,
                client: tuple[str, int] | None = (PEER, 1234),
                http_version: str | None = None) -> Response:
        hs = list(headers or [])
        if ua is not None:
            hs.append((b"user-agent", ua))
        scope: dict[str, Any] = {"type": "http", "method": method, "path": "/c",
                                 "query_string": query, "headers": hs, "client": client}
        if http_version is not None:
            scope["http_version"] = http_version
        messages: list[MutableMapping[str, Any]] = []

        async def send(message: MutableMapping[str, Any]) -> None:
            messages.append(message)

        before = len(self.events)
        run(self.endpoint(scope, send))
        return Response(messages, self.events[before:])


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("CPS_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def registry() -> Iterator[None]:
    # The endpoint binds to the metric slots when constructed: open them first.
    telemetry.REGISTRY.open(None)
    yield
    telemetry.REGISTRY.open(None)


@pytest.fixture
def h() -> Harness:
    return Harness()


def count(verdict: Verdict) -> int:
    return telemetry.requests.value(verdict.value)


def assert_one_event(r: Response, verdict: Verdict) -> ClickEvent:
    assert len(r.events) == 1
    event = r.event
    assert event.verdict is verdict
    assert event.version == 1
    assert r.record[0] == event.ts
    assert r.record[1] == (event.buyer_key.encode() if event.buyer_key else None)
    assert click_id_ms(event.click_id) == event.ts
    assert abs(event.ts - time.time() * 1000) < 60_000
    return event


def assert_allowed_location(allow: AllowList, location: str) -> None:
    """The Location, minus the tracking parameters the edge appends, passes the allow-list."""
    split = urlsplit(location)
    assert split.scheme == "https"
    assert split.username is None
    assert split.port is None
    assert split.hostname == "shop.example.com" or (
        split.hostname is not None and split.hostname.endswith(".mall.example"))
    query = "&".join(p for p in split.query.split("&")
                     if p and p.partition("=")[0] not in TRACKING_PARAMS)
    allow.check(urlunsplit(split._replace(query=query)))  # raises if off the list


def assert_complete_response(r: Response) -> None:
    assert len(r.starts) == 1
    assert r.messages[0]["type"] == "http.response.start"
    assert r.messages[-1]["type"] == "http.response.body"
    assert not r.messages[-1].get("more_body", False)
    length = r.header(b"content-length")
    assert length is not None
    assert int(length) == len(r.body)


# ------------------------------------------------------------------ valid clicks


def test_valid_click(h: Harness) -> None:
    q = mint(position_id="POS1", shop_id="S1", product_id="PR1", sub_ids=("a b", "", "x"))
    r = h.request(q, headers=[(b"referer", b"https://live.example/room/1")])
    assert_complete_response(r)
    assert r.status == 302
    assert r.body == b""
    assert r.header(b"cache-control") == b"no-store"
    assert r.header(b"x-cps-verdict") is None  # off by default
    loc = r.location
    assert loc is not None
    assert loc.startswith("https://shop.example.com/item/1?sku=9&cps_click_id=")
    split = urlsplit(loc)
    assert split.hostname == "shop.example.com"
    assert_allowed_location(h.settings.allowed_target_hosts, loc)
    params = parse_qsl(split.query)
    assert [k for k, _ in params] == ["sku", "cps_click_id", "cps_promoter", "cps_channel"]
    tracking = dict(params)
    assert tracking["cps_promoter"] == "P1"
    assert tracking["cps_channel"] == "douyin"

    event = assert_one_event(r, Verdict.VALID)
    assert event.click_id == tracking["cps_click_id"]
    assert event.reason == ""
    assert event.billable
    assert event.promoter_id == "P1"
    assert event.channel_id == "douyin"
    assert event.position_id == "POS1"
    assert event.shop_id == "S1"
    assert event.product_id == "PR1"
    assert event.sub_ids == ("a b", "", "x")
    assert event.target == TARGET
    assert event.link_kid == "k1"
    assert event.link_sig == q[-64:].decode()
    assert event.link_exp is not None
    assert event.link_exp > time.time()
    assert event.ip == PEER
    assert event.user_agent == CHROME.decode()
    assert event.referer == "https://live.example/room/1"
    assert event.raw_query is None

    # The cookie: sealed attribution of exactly this click.
    set_cookie = r.header(b"set-cookie")
    assert set_cookie is not None
    attrs = set_cookie.decode().split("; ")
    assert attrs[0].startswith("cps_attr=c1.")
    assert attrs[1:] == ["Max-Age=1296000", "Path=/", "HttpOnly", "Secure", "SameSite=Lax"]
    value = r.cookie_value
    assert value is not None
    found = SEALER.unseal(value)
    assert found is not None
    assert found.visitor_id == event.buyer_key != ""
    assert found.click_id == event.click_id
    assert found.promoter_id == "P1"
    assert found.channel_id == "douyin"
    assert found.click_ms == event.ts
    assert found.window_end_ms == event.ts + WINDOW_MS
    assert count(Verdict.VALID) == 1


def test_target_with_fragment_and_without_query(h: Harness) -> None:
    r = h.request(mint("https://shop.example.com/p?x=1#reviews"))
    loc = r.location
    assert loc is not None
    assert loc.startswith("https://shop.example.com/p?x=1&cps_click_id=")
    assert loc.endswith("&cps_promoter=P1&cps_channel=douyin#reviews")
    r = h.request(mint("https://a.mall.example/"))
    loc = r.location
    assert loc is not None
    assert loc.startswith("https://a.mall.example/?cps_click_id=")
    assert r.tracking()["cps_click_id"] == r.event.click_id


def test_ids_are_percent_encoded_in_location(h: Harness) -> None:
    r = h.request(mint(promoter="p:1.x", channel="c_2-x"))
    tracking = r.tracking()
    assert tracking["cps_promoter"] == "p:1.x"
    assert tracking["cps_channel"] == "c_2-x"
    assert r.location is not None
    assert "cps_promoter=p%3A1.x" in r.location


def test_cookie_domain_and_insecure_flag() -> None:
    h = Harness({"cookie_domain": ".shop.example.com", "cookie_secure": False,
                 "cookie_name": "aff", "attribution_window_s": 3600})
    r = h.request(mint())
    set_cookie = r.header(b"set-cookie")
    assert set_cookie is not None
    attrs = set_cookie.decode().split("; ")
    assert attrs[0].startswith("aff=")
    assert attrs[1:] == ["Max-Age=3600", "Path=/", "Domain=.shop.example.com", "HttpOnly",
                         "SameSite=Lax"]
    found = SEALER.unseal(attrs[0].split("=", 1)[1])
    assert found is not None
    assert found.window_end_ms - found.click_ms == 3_600_000


def test_returning_buyer_keeps_visitor_id(h: Harness) -> None:
    first = h.request(mint("https://shop.example.com/a"))
    cookie = first.header(b"set-cookie")
    assert cookie is not None
    visitor = first.event.buyer_key
    second = h.request(mint("https://shop.example.com/b"), headers=[
        (b"cookie", b"other=1; " + cookie.split(b";", 1)[0] + b"; z=2")])
    event = assert_one_event(second, Verdict.VALID)
    assert event.buyer_key == visitor
    assert event.click_id != first.event.click_id
    value = second.cookie_value
    assert value is not None
    found = SEALER.unseal(value)
    assert found is not None
    assert found.visitor_id == visitor


@pytest.mark.parametrize("cookie", [
    b"cps_attr=c1.forged",
    b"cps_attr=",
    b"xcps_attr=" + SEALER.seal(Attribution("v-x", "P", "C", "0" * 28, 1, 2)).encode(),
    b"cps_attr=" + CookieSealer(generate_ring(("c1",), 32)).seal(
        Attribution("v-other-key", "P", "C", "0" * 28, 1, 2)).encode(),
])
def test_foreign_or_forged_cookie_is_not_a_visitor_id(h: Harness, cookie: bytes) -> None:
    r = h.request(mint(), headers=[(b"cookie", cookie)])
    event = assert_one_event(r, Verdict.VALID)
    assert event.buyer_key not in ("", "v-x", "v-other-key")


# ------------------------------------------------------------------ expired and bots


def test_expired_link(h: Harness) -> None:
    q = mint(expires_at=int(time.time()) - 10)
    r = h.request(q)
    assert_complete_response(r)
    assert r.status == 302
    assert r.location == TARGET  # plain target, no tracking
    assert r.header(b"set-cookie") is None
    assert r.header(b"cache-control") == b"no-store"
    event = assert_one_event(r, Verdict.EXPIRED)
    assert event.reason == "link expired"
    assert event.buyer_key == ""
    assert r.record[1] is None
    assert event.promoter_id == "P1"
    assert not event.billable
    assert count(Verdict.EXPIRED) == 1


def test_expired_link_keeps_known_visitor(h: Harness) -> None:
    sealed = SEALER.seal(Attribution("visitor-7", "P", "C", "0" * 28, 1, 2))
    r = h.request(mint(expires_at=int(time.time()) - 1),
                  headers=[(b"cookie", b"cps_attr=" + sealed.encode())])
    event = assert_one_event(r, Verdict.EXPIRED)
    assert event.buyer_key == "visitor-7"
    assert r.record[1] == b"visitor-7"


def test_expiry_is_checked_per_request_not_per_cache_entry(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    exp = int(time.time()) + 100
    q = mint(expires_at=exp)
    assert h.request(q).event.verdict is Verdict.VALID
    real_ns = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real_ns() + 200 * 10**9)
    r = h.request(q, ua=WECHAT)
    assert r.event.verdict is Verdict.EXPIRED
    assert r.location == TARGET


BOT_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("googlebot", {"ua": b"Mozilla/5.0 (compatible; Googlebot/2.1)"}, "user agent matches 'bot'"),
    ("whatsapp", {"ua": b"WhatsApp/2.23.20.0 A"}, "user agent matches 'whatsapp'"),
    ("curl", {"ua": b"curl/8.4.0"}, "user agent matches 'curl/'"),
    ("postman", {"ua": b"PostmanRuntime/7.36.0"}, "user agent matches 'postmanruntime/'"),
    ("no-ua", {"ua": None}, "no user agent"),
    ("empty-ua", {"ua": b""}, "no user agent"),
    ("head", {"method": "HEAD"}, "HEAD request"),
    ("img", {"headers": [(b"sec-fetch-dest", b"image")]},
     "sub-resource load (sec-fetch-dest image)"),
    ("iframe", {"headers": [(b"sec-fetch-dest", b"iframe")]},
     "sub-resource load (sec-fetch-dest iframe)"),
    ("fetch", {"headers": [(b"sec-fetch-dest", b"empty")]},
     "sub-resource load (sec-fetch-dest empty)"),
    ("sec-purpose", {"headers": [(b"sec-purpose", b"prefetch;prerender")]}, "prefetch"),
    ("purpose", {"headers": [(b"purpose", b"prefetch")]}, "prefetch"),
    ("x-purpose", {"headers": [(b"x-purpose", b"preview")]}, "prefetch"),
]


@pytest.mark.parametrize(("kwargs", "reason"), [c[1:] for c in BOT_CASES],
                         ids=[c[0] for c in BOT_CASES])
def test_bots_get_the_target_without_cookie(h: Harness, kwargs: dict[str, Any],
                                            reason: str) -> None:
    r = h.request(mint(), **kwargs)
    assert_complete_response(r)
    assert r.status == 302
    assert r.location == TARGET
    assert r.header(b"set-cookie") is None
    event = assert_one_event(r, Verdict.BOT)
    assert event.reason == reason
    assert event.buyer_key == ""
    assert count(Verdict.BOT) == 1


def test_document_navigation_is_a_click(h: Harness) -> None:
    r = h.request(mint(), headers=[(b"sec-fetch-dest", b"document"),
                                   (b"sec-fetch-mode", b"navigate")])
    assert_one_event(r, Verdict.VALID)


def test_extra_bot_patterns_from_settings() -> None:
    h = Harness({"bot_user_agents": "InternalProbe, ZGrab"})
    r = h.request(mint(), ua=b"Mozilla/5.0 internalprobe/1.0")
    assert r.event.verdict is Verdict.BOT
    assert r.event.reason == "user agent matches 'internalprobe'"
    assert h.request(mint(), ua=WECHAT).event.verdict is Verdict.VALID


def test_head_is_never_a_duplicate_or_valid(h: Harness) -> None:
    q = mint()
    for _ in range(3):
        r = h.request(q, method="HEAD")
        assert r.event.verdict is Verdict.BOT
    assert h.request(q).event.verdict is Verdict.VALID


# ------------------------------------------------------------------ invalid links

OTHER_KID_RING = generate_ring(("k9",), 32)
SAME_KID_OTHER_SECRET = generate_ring(("k1",), 32)


def _tampered_target() -> bytes:
    q = mint()
    out = q.replace(b"item%2F1", b"item%2F2")
    assert out != q
    return out


def _tampered_host() -> bytes:
    q = mint()
    out = q.replace(b"shop.example.com", b"evil.example")
    assert out != q
    return out


INVALID: list[tuple[str, bytes, Verdict, int]] = [
    ("empty", b"", Verdict.MALFORMED, 400),
    ("garbage", b"hello", Verdict.MALFORMED, 400),
    ("missing-sig", mint()[:-69], Verdict.MALFORMED, 400),
    ("unknown-param", mint() + b"&utm=1", Verdict.MALFORMED, 400),
    ("duplicate-param", b"p=a&" + mint(), Verdict.MALFORMED, 400),
    ("non-ascii", mint().replace(b"P1", "P\u00e9".encode()), Verdict.MALFORMED, 400),
    ("too-long", mint() + b"&sub1=" + b"x" * 5000, Verdict.MALFORMED, 400),
    ("unknown-key", mint(ring=OTHER_KID_RING), Verdict.UNKNOWN_KEY, 403),
    ("bad-signature", mint(ring=SAME_KID_OTHER_SECRET), Verdict.BAD_SIGNATURE, 403),
    ("tampered-target", _tampered_target(), Verdict.BAD_SIGNATURE, 403),
    ("tampered-host", _tampered_host(), Verdict.BAD_SIGNATURE, 403),
    ("target-not-allowed", mint("https://evil.example/landing"), Verdict.TARGET_NOT_ALLOWED, 403),
    ("apex-of-wildcard", mint("https://mall.example/"), Verdict.TARGET_NOT_ALLOWED, 403),
    ("http-target", mint("http://shop.example.com/"), Verdict.TARGET_NOT_ALLOWED, 403),
]


@pytest.mark.parametrize(("query", "verdict", "status"), [c[1:] for c in INVALID],
                         ids=[c[0] for c in INVALID])
def test_invalid_links_never_redirect(h: Harness, query: bytes, verdict: Verdict,
                                      status: int) -> None:
    r = h.request(query)
    assert_complete_response(r)
    assert r.status == status
    assert r.location is None
    assert r.header(b"set-cookie") is None
    assert r.header(b"content-type") == b"text/plain; charset=utf-8"
    assert r.header(b"x-content-type-options") == b"nosniff"
    assert r.header(b"cache-control") == b"no-store"
    assert r.body.startswith(f"invalid promotion link: {verdict.value}: ".encode())
    event = assert_one_event(r, verdict)
    assert event.reason
    assert not event.billable
    if verdict is Verdict.TARGET_NOT_ALLOWED:
        # Signed: the link's fields are known and recorded, the query is not needed.
        assert event.promoter_id == "P1"
        assert event.target is not None
        assert event.link_sig is not None
        assert event.raw_query is None
    else:
        assert event.promoter_id is None
        assert event.target is None
        assert event.raw_query == query[:512].decode("utf-8", "replace")
    assert count(verdict) == 1
    assert h.endpoint.cached_links == 0  # refusals are not cached


@pytest.mark.parametrize(("query", "verdict", "status"), [c[1:] for c in INVALID],
                         ids=[c[0] for c in INVALID])
def test_invalid_links_go_to_the_safe_landing_page(query: bytes, verdict: Verdict,
                                                   status: int) -> None:
    h = Harness({"safe_landing_url": "https://shop.example.com/oops"})
    r = h.request(query)
    assert_complete_response(r)
    assert r.status == 302
    assert r.location == f"https://shop.example.com/oops?reason={verdict.value}"
    assert r.header(b"set-cookie") is None
    assert r.body == b""
    assert_one_event(r, verdict)


def test_safe_landing_page_with_query() -> None:
    h = Harness({"safe_landing_url": "https://shop.example.com/oops?lang=zh"})
    r = h.request(b"garbage")
    assert r.location == "https://shop.example.com/oops?lang=zh&reason=malformed"


def test_safe_landing_page_with_fragment() -> None:
    h = Harness({"safe_landing_url": "https://shop.example.com/help#invalid-link"})
    r = h.request(b"garbage")
    assert r.location is not None
    assert urlsplit(r.location).query == "reason=malformed"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "get"])
def test_other_methods_are_refused(method: str) -> None:
    for h in (Harness(), Harness({"safe_landing_url": "https://shop.example.com/oops"})):
        r = h.request(mint(), method=method)
        assert_complete_response(r)
        assert r.status == 405
        assert r.header(b"allow") == b"GET, HEAD"
        assert r.location is None
        event = assert_one_event(r, Verdict.MALFORMED)
        assert event.reason == f"method {method} not allowed"


def test_http_09_request_line_is_refused(h: Harness) -> None:
    q = mint()
    messages: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        messages.append(message)

    scope = {"type": "http", "http_version": "0.9", "method": "GET", "path": "/c",
             "query_string": q, "headers": [(b"user-agent", CHROME)], "client": (PEER, 1)}
    run(h.endpoint(scope, send))
    r = Response(messages, h.events[-1:])
    assert_complete_response(r)
    assert r.status == 400
    assert r.location is None
    event = assert_one_event(r, Verdict.MALFORMED)
    assert event.reason == "request line is not HTTP/1.x"
    assert len(h.events) == 1
    # HTTP/1.x requests are not affected.
    scope["http_version"] = "1.1"
    messages.clear()
    run(h.endpoint(scope, send))
    assert messages[0]["status"] == 302


# ------------------------------------------------------------------ rate limiting


def test_rate_limit() -> None:
    h = Harness({"rate_limit_per_s": 1, "rate_limit_burst": 2, "duplicate_window_s": 0})
    q = mint()
    assert h.request(q).status == 302
    assert h.request(q).status == 302
    r = h.request(q)
    assert_complete_response(r)
    assert r.status == 429
    assert r.header(b"retry-after") == b"1"
    assert r.header(b"cache-control") == b"no-store"
    assert r.body == b"too many requests\n"
    assert r.location is None
    assert r.header(b"set-cookie") is None
    event = assert_one_event(r, Verdict.RATE_LIMITED)
    assert event.reason == "per-IP rate limit"
    assert event.promoter_id == "P1"
    assert count(Verdict.RATE_LIMITED) == 1
    # Another client is unaffected.
    assert h.request(q, client=("10.0.0.2", 1)).status == 302


def test_rate_limit_zero_disables() -> None:
    h = Harness({"rate_limit_per_s": 0, "rate_limit_burst": 1, "duplicate_window_s": 0})
    q = mint()
    assert all(h.request(q).status == 302 for _ in range(20))
    assert count(Verdict.RATE_LIMITED) == 0


def test_rate_limit_precedes_expiry_and_bot_checks() -> None:
    h = Harness({"rate_limit_per_s": 1, "rate_limit_burst": 1})
    q = mint(expires_at=int(time.time()) - 5)
    assert h.request(q).event.verdict is Verdict.EXPIRED
    assert h.request(q, ua=b"Googlebot").event.verdict is Verdict.RATE_LIMITED


def no_refill(burst: int) -> Harness:
    """An endpoint whose limiter refills once in ~11 days: counts, not timing, decide."""
    h = Harness({"rate_limit_per_s": 1, "rate_limit_burst": burst, "duplicate_window_s": 0})
    h.endpoint._limiter = IpRateLimiter(1e-6, burst)
    return h


# (method, http_version, status while the client has tokens)
ANY_REQUEST = [("POST", None, 405), ("PUT", None, 405), ("DELETE", None, 405),
               ("OPTIONS", None, 405), ("PATCH", None, 405), ("HEAD", None, 302),
               ("GET", None, 302), ("GET", "0.9", 400)]


@pytest.mark.parametrize(("method", "version", "status"), ANY_REQUEST,
                         ids=[f"{m}-{v or '1.1'}" for m, v, _ in ANY_REQUEST])
def test_the_limit_covers_every_method(method: str, version: str | None, status: int) -> None:
    """1,000 requests of one kind from one address, burst 500: 500 answers, then 429s."""
    h = no_refill(500)
    q = mint()
    statuses = [h.request(q, method=method, http_version=version).status for _ in range(1000)]
    assert statuses == [status] * 500 + [429] * 500
    assert count(Verdict.RATE_LIMITED) == 500
    assert len(h.events) == 1000  # still one event per request
    # Another address is not affected by this one's flood.
    assert h.request(q, method=method, http_version=version,
                     client=("10.0.0.2", 1)).status == status


# ------------------------------------------------------------------ bounded work per request

# Sealed under the right key id with another secret: each one passes every cheap
# check and costs a full AES-GCM open before it is refused.
FORGED = CookieSealer(generate_ring(("c1",), 32)).seal(
    Attribution("forged", "P", "C", "0" * 28, 1, 2))
GENUINE = SEALER.seal(Attribution("visitor-genuine", "P", "C", "0" * 28, 1, 2))


def cookie_header(values: list[str]) -> list[tuple[bytes, bytes]]:
    return [(b"cookie", "; ".join(f"cps_attr={v}" for v in values).encode())]


@pytest.fixture
def unseals(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The values every CookieSealer.unseal call was given: the per-cookie crypto cost."""
    calls: list[str] = []
    real = CookieSealer.unseal

    def counting(self: CookieSealer, value: str) -> Attribution | None:
        calls.append(value)
        return real(self, value)

    monkeypatch.setattr(CookieSealer, "unseal", counting)
    return calls


@pytest.fixture
def bot_checks(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    calls: list[bytes] = []
    real = RequesterFilter.bot_reason

    def counting(self: RequesterFilter, ua: bytes) -> str | None:
        calls.append(ua)
        return real(self, ua)

    monkeypatch.setattr(RequesterFilter, "bot_reason", counting)
    return calls


def test_attribution_cookies_tried_are_few() -> None:
    assert 2 <= MAX_ATTRIBUTION_COOKIES <= 4  # a stale one or two, never "all of them"


# Every path that reads the visitor id: (request kwargs, verdict).
VISITOR_PATHS: list[tuple[str, dict[str, Any], Verdict]] = [
    ("valid", {}, Verdict.VALID),
    ("head", {"method": "HEAD"}, Verdict.BOT),
    ("bot-ua", {"ua": b"curl/8.4.0"}, Verdict.BOT),
    ("expired", {"query": mint(expires_at=int(time.time()) - 5)}, Verdict.EXPIRED),
    ("invalid-link", {"query": b"garbage"}, Verdict.MALFORMED),
    ("bad-signature", {"query": mint(ring=SAME_KID_OTHER_SECRET)}, Verdict.BAD_SIGNATURE),
    ("post", {"method": "POST"}, Verdict.MALFORMED),
    ("http-0.9", {"http_version": "0.9"}, Verdict.MALFORMED),
]


@pytest.mark.parametrize(("kwargs", "verdict"), [c[1:] for c in VISITOR_PATHS],
                         ids=[c[0] for c in VISITOR_PATHS])
def test_hundreds_of_attribution_cookies_cost_a_few_unseals(
        unseals: list[str], kwargs: dict[str, Any], verdict: Verdict) -> None:
    h = Harness()
    kwargs = dict(kwargs)
    query = kwargs.pop("query", mint())
    r = h.request(query, headers=cookie_header([FORGED] * 500 + [GENUINE]), **kwargs)
    event = assert_one_event(r, verdict)
    assert len(unseals) == MAX_ATTRIBUTION_COOKIES
    assert event.buyer_key != "visitor-genuine"  # past the limit: not looked at


@pytest.mark.parametrize("position", range(MAX_ATTRIBUTION_COOKIES))
def test_a_genuine_cookie_among_the_first_few_counts(unseals: list[str], position: int) -> None:
    h = Harness()
    values = [FORGED] * position + [GENUINE] + [FORGED] * 50
    r = h.request(mint(), headers=cookie_header(values))
    assert assert_one_event(r, Verdict.VALID).buyer_key == "visitor-genuine"
    assert len(unseals) == position + 1  # stops at the first genuine one


def test_a_genuine_cookie_after_the_first_few_is_ignored(h: Harness) -> None:
    values = [FORGED] * MAX_ATTRIBUTION_COOKIES + [GENUINE]
    r = h.request(mint(), headers=cookie_header(values))
    assert assert_one_event(r, Verdict.VALID).buyer_key not in ("", "visitor-genuine")


def test_other_cookie_names_cost_no_unseal(h: Harness, unseals: list[str]) -> None:
    other = b"; ".join([b"xcps_attr=" + FORGED.encode()] * 500 + [b"a=cps_attr=1"])
    r = h.request(mint(), headers=[(b"cookie", other + b"; cps_attr=" + GENUINE.encode())])
    assert assert_one_event(r, Verdict.VALID).buyer_key == "visitor-genuine"
    assert unseals == [GENUINE]


def test_no_cookie_no_unseal(h: Harness, unseals: list[str]) -> None:
    h.request(mint())
    h.request(mint(), headers=[(b"cookie", b"theme=dark; lang=zh")])
    assert unseals == []


@pytest.mark.parametrize(("method", "version", "status"), ANY_REQUEST,
                         ids=[f"{m}-{v or '1.1'}" for m, v, _ in ANY_REQUEST])
def test_a_rate_limited_request_does_no_crypto(
        unseals: list[str], verify_calls: list[bytes], bot_checks: list[bytes],
        method: str, version: str | None, status: int) -> None:
    """Past the limit: no HMAC, no AES-GCM, no User-Agent scan, whatever the request."""
    h = no_refill(1)
    cookies = cookie_header([FORGED] * 500)
    assert h.request(mint(), method=method, http_version=version,
                     headers=cookies).status == status
    unseals.clear()
    verify_calls.clear()
    bot_checks.clear()
    for n in range(20):  # unseen links: nothing cached to lean on
        r = h.request(mint(promoter=f"flood-{n}"), method=method, http_version=version,
                      headers=cookies)
        assert r.status == 429
        assert_one_event(r, Verdict.RATE_LIMITED)
    assert unseals == []
    assert verify_calls == []
    assert bot_checks == []


def test_a_rate_limited_post_emits_the_usual_rate_limited_event() -> None:
    h = no_refill(1)
    q = mint()
    assert h.request(q).status == 302
    by_get, by_post = h.request(q), h.request(q, method="POST")
    assert by_get.status == by_post.status == 429
    assert by_post.header(b"allow") is None  # a 429, not a 405 in disguise
    get_event, post_event = by_get.raw_event, by_post.raw_event
    for volatile in ("click_id", "ts"):
        get_event.pop(volatile)
        post_event.pop(volatile)
    assert post_event == get_event
    assert post_event["verdict"] == "rate_limited"
    assert post_event["promoter_id"] == "P1"


def test_forwarded_for_is_not_split_beyond_the_hops() -> None:
    header = b"," * 100_000 + b"198.51.100.7, 203.0.113.9"
    assert redirect._forwarded_ip(header, 2) == "198.51.100.7"
    assert redirect._forwarded_ip(header, 3) is None  # an empty entry
    assert redirect._forwarded_ip(b"1.1.1.1, 198.51.100.7, 203.0.113.9", 3) == "1.1.1.1"


# ------------------------------------------------------------------ duplicates


def test_duplicate_returns_identical_answer(h: Harness) -> None:
    q = mint()
    first = h.request(q)
    second = h.request(q)
    assert second.status == 302
    assert_same_answer(first, second)  # same click id, same attribution
    assert second.body == first.body
    e1 = assert_one_event(first, Verdict.VALID)
    e2 = assert_one_event(second, Verdict.DUPLICATE)
    assert e2.reason == f"repeat of {e1.click_id}"
    assert e2.buyer_key == e1.buyer_key
    assert e2.click_id != e1.click_id
    assert not e2.billable
    assert count(Verdict.VALID) == 1
    assert count(Verdict.DUPLICATE) == 1


def test_duplicate_keyed_by_visitor_cookie(h: Harness) -> None:
    sealed = SEALER.seal(Attribution("visitor-9", "P", "C", "0" * 28, 1, 2))
    cookie = [(b"cookie", b"cps_attr=" + sealed.encode())]
    q = mint()
    first = h.request(q, headers=cookie)
    # Same visitor from another network and browser build: still the same buyer.
    second = h.request(q, headers=cookie, ua=WECHAT, client=("10.9.9.9", 5))
    assert first.event.buyer_key == "visitor-9"
    assert second.event.verdict is Verdict.DUPLICATE
    assert_same_answer(first, second)


def test_not_duplicates(h: Harness) -> None:
    q = mint()
    assert h.request(q).event.verdict is Verdict.VALID
    # Other link, other IP, other User-Agent: each a new buyer-link pair.
    assert h.request(mint("https://shop.example.com/other")).event.verdict is Verdict.VALID
    assert h.request(q, client=("10.0.0.2", 1)).event.verdict is Verdict.VALID
    assert h.request(q, ua=WECHAT).event.verdict is Verdict.VALID


def test_duplicate_window_zero_disables() -> None:
    h = Harness({"duplicate_window_s": 0})
    q = mint()
    r1, r2 = h.request(q), h.request(q)
    assert r1.event.verdict is r2.event.verdict is Verdict.VALID
    assert r1.event.click_id != r2.event.click_id


def test_duplicate_window_expires(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    q = mint()
    first = h.request(q)
    real_ns = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real_ns() + 31 * 10**9)
    again = h.request(q)
    assert again.event.verdict is Verdict.VALID
    assert again.event.click_id != first.event.click_id


def test_repeat_with_the_cookie_from_the_first_answer_is_a_duplicate(h: Harness) -> None:
    q = mint()
    first = h.request(q)
    cookie = first.header(b"set-cookie")
    assert cookie is not None
    second = h.request(q, headers=[(b"cookie", cookie.split(b";", 1)[0])])
    assert second.event.verdict is Verdict.DUPLICATE
    assert second.tracking()["cps_click_id"] == first.event.click_id
    assert_same_answer(first, second)
    assert second.event.buyer_key == first.event.buyer_key
    # The same phone after switching from Wi-Fi to mobile data: still the same buyer.
    third = h.request(q, headers=[(b"cookie", cookie.split(b";", 1)[0])],
                      client=("100.64.1.2", 9))
    assert third.event.verdict is Verdict.DUPLICATE
    assert count(Verdict.VALID) == 1


def test_two_buyers_behind_one_nat_do_not_share_a_cookie(h: Harness) -> None:
    q = mint()
    first = h.request(q)  # buyer A: no cookie yet
    sealed = SEALER.seal(Attribution("visitor-b", "P", "C", "0" * 28, 1, 2))
    other = h.request(q, headers=[(b"cookie", b"cps_attr=" + sealed.encode())])  # buyer B
    event = assert_one_event(other, Verdict.VALID)
    assert event.buyer_key == "visitor-b"
    assert other.header(b"set-cookie") != first.header(b"set-cookie")
    assert event.click_id != first.event.click_id


def test_first_genuine_cookie_of_several_counts(h: Harness) -> None:
    stale = CookieSealer(generate_ring(("c1",), 32)).seal(
        Attribution("stale", "P", "C", "0" * 28, 1, 2))
    good = SEALER.seal(Attribution("visitor-g", "P", "C", "0" * 28, 1, 2))
    header = f"cps_attr={stale}; xcps_attr=zzz; cps_attr=garbage; cps_attr={good}".encode()
    r = h.request(mint(), headers=[(b"cookie", header)])
    assert assert_one_event(r, Verdict.VALID).buyer_key == "visitor-g"


# ------------------------------------------------------------------ verdict header


def test_verdict_header_when_enabled() -> None:
    h = Harness({"verdict_header": True, "rate_limit_per_s": 1, "rate_limit_burst": 3})
    q = mint()
    cases = [
        (h.request(b"x"), "malformed"),
        (h.request(q), "valid"),
        (h.request(q), "duplicate"),
        (h.request(q, method="HEAD", client=("10.0.0.6", 1)), "bot"),
        (h.request(q), "rate_limited"),  # the fourth request of this client: burst is 3
        (h.request(q, method="POST"), "rate_limited"),  # the limit covers every method
        (h.request(q, method="POST", client=("10.0.0.7", 1)), "malformed"),
        (h.request(mint(expires_at=1), client=("10.0.0.5", 1)), "expired"),
    ]
    for r, verdict in cases:
        assert r.header(b"x-cps-verdict") == verdict.encode()
        assert r.event.verdict.value == verdict


# ------------------------------------------------------------------ client address


@pytest.mark.parametrize(("hops", "xff", "expected"), [
    (0, b"198.51.100.7", PEER),
    (1, b"198.51.100.7, 203.0.113.9", "203.0.113.9"),
    (1, b"203.0.113.9", "203.0.113.9"),
    (2, b"198.51.100.7, 203.0.113.9", "198.51.100.7"),
    (2, b"1.1.1.1,198.51.100.7,203.0.113.9", "198.51.100.7"),
    (2, b"203.0.113.9", PEER),  # shorter than the proxy chain: fall back to the peer
    (3, b"198.51.100.7, 203.0.113.9", PEER),
    (1, None, PEER),
    (1, b"", PEER),
    (1, b"198.51.100.7, ", PEER),
    (1, b"2001:db8::1", "2001:db8::1"),
    (1, "caf\u00e9".encode(), PEER),
    (1, b"x" * 50, PEER),
])
def test_forwarded_for(hops: int, xff: bytes | None, expected: str) -> None:
    h = Harness({"forwarded_hops": hops})
    headers = [(b"x-forwarded-for", xff)] if xff is not None else []
    r = h.request(mint(), headers=headers)
    assert r.event.ip == expected


def test_rate_limit_uses_the_forwarded_address() -> None:
    h = Harness({"forwarded_hops": 1, "rate_limit_per_s": 1, "rate_limit_burst": 1,
                 "duplicate_window_s": 0})
    q = mint()

    def via(client: bytes) -> int:
        return h.request(q, headers=[(b"x-forwarded-for", client)],
                         client=("10.0.0.254", 1)).status

    assert via(b"203.0.113.1") == 302
    assert via(b"203.0.113.2") == 302  # same proxy, another client
    assert via(b"spoofed, 203.0.113.1") == 429


def test_missing_client_address(h: Harness) -> None:
    r = h.request(mint(), client=None)
    assert r.status == 302
    assert r.event.ip == ""


# ------------------------------------------------------------------ link cache


@pytest.fixture
def verify_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    calls: list[bytes] = []
    real = links.verify_query

    def counting(query: bytes, *args: Any) -> LinkCheck:
        calls.append(query)
        return real(query, *args)

    monkeypatch.setattr("edge.redirect.verify_query", counting)
    return calls


def test_link_cache_verifies_each_link_once(h: Harness, verify_calls: list[bytes]) -> None:
    q = mint()
    assert h.endpoint.cached_links == 0
    first = h.request(q)
    assert verify_calls == [q]
    assert h.endpoint.cached_links == 1
    for ua in (WECHAT, b"Googlebot", CHROME + b" 2"):
        assert h.request(q, ua=ua).status == 302
    assert verify_calls == [q]
    assert h.endpoint.cached_links == 1
    # The cached answer is the same as a fresh one.
    again = h.request(q, client=("10.0.0.3", 1))
    assert again.event.verdict is Verdict.VALID
    assert again.event.target == first.event.target
    assert again.event.link_sig == first.event.link_sig


def test_invalid_links_are_not_cached(h: Harness, verify_calls: list[bytes]) -> None:
    q = mint(ring=SAME_KID_OTHER_SECRET)
    for _ in range(3):
        assert h.request(q).status == 403
    assert verify_calls == [q, q, q]
    assert h.endpoint.cached_links == 0


def test_link_cache_generation_rollover_stays_bounded(verify_calls: list[bytes]) -> None:
    h = Harness({"duplicate_window_s": 0, "rate_limit_per_s": 0})
    n = 2 * LINK_CACHE_GENERATION + 10
    queries = [mint(f"https://shop.example.com/p/{i}") for i in range(n)]
    for i, q in enumerate(queries):
        r = h.request(q)
        assert r.status == 302
        if i % 500 == 0 or i == n - 1:
            assert r.event.verdict is Verdict.VALID
        assert h.endpoint.cached_links <= 2 * LINK_CACHE_GENERATION
    assert len(verify_calls) == n
    assert h.endpoint.cached_links <= 2 * LINK_CACHE_GENERATION
    # The most recent links are still cached...
    verify_calls.clear()
    for q in queries[-100:]:
        assert h.request(q).event.verdict is Verdict.VALID
    assert verify_calls == []
    # ...the oldest were forgotten, and still work.
    r = h.request(queries[0])
    assert verify_calls == [queries[0]]
    assert r.event.verdict is Verdict.VALID
    assert r.event.target == "https://shop.example.com/p/0"
    assert h.endpoint.cached_links <= 2 * LINK_CACHE_GENERATION


def test_link_cache_promotes_recent_hits_from_the_old_generation(
        monkeypatch: pytest.MonkeyPatch, verify_calls: list[bytes]) -> None:
    monkeypatch.setattr("edge.redirect.LINK_CACHE_GENERATION", 3)
    h = Harness({"duplicate_window_s": 0, "rate_limit_per_s": 0})
    a, b, c, d, e, f = (mint(f"https://shop.example.com/{x}") for x in "abcdef")
    for q in (a, b, c, d):  # d rolls a, b, c into the old generation
        h.request(q)
    assert h.endpoint.cached_links == 4
    verify_calls.clear()
    h.request(a)  # found in the old generation: promoted without verifying
    assert verify_calls == []
    for q in (e, f):  # f rolls d, a, e into the old generation; b and c are dropped
        h.request(q)
    assert h.endpoint.cached_links <= 6
    verify_calls.clear()
    h.request(a)
    assert verify_calls == []
    h.request(b)
    assert verify_calls == [b]


# ------------------------------------------------------------------ every request, one event


def test_every_path_emits_exactly_one_event_and_counts_it() -> None:
    h = Harness({"rate_limit_per_s": 1, "rate_limit_burst": 2})
    q = mint()
    requests: list[Callable[[], Response]] = [
        lambda: h.request(b"nope", client=("10.0.0.9", 1)),
        lambda: h.request(q),
        lambda: h.request(q),
        lambda: h.request(q),
        lambda: h.request(q, method="POST", client=("10.0.0.11", 1)),
        lambda: h.request(q, method="POST"),  # PEER is out of tokens: 429, not 405
        lambda: h.request(mint(ring=OTHER_KID_RING), client=("10.0.0.10", 1)),
        lambda: h.request(q, client=("10.0.0.7", 1), ua=b"Twitterbot/1.0"),
        lambda: h.request(mint(expires_at=1), client=("10.0.0.8", 1)),
    ]
    for send in requests:
        r = send()
        assert len(r.events) == 1
        assert len(r.starts) == 1
        ClickEvent.from_json(r.record[2])
    assert len(h.events) == len(requests)
    counts = {v: count(v) for v in Verdict}
    assert sum(counts.values()) == len(requests)
    assert counts[Verdict.MALFORMED] == 2
    assert counts[Verdict.VALID] == 1
    assert counts[Verdict.DUPLICATE] == 1
    assert counts[Verdict.RATE_LIMITED] == 2
    assert counts[Verdict.UNKNOWN_KEY] == 1
    assert counts[Verdict.BOT] == 1
    assert counts[Verdict.EXPIRED] == 1
    histogram_count = telemetry.REGISTRY.slots[
        telemetry.request_seconds._count]
    assert histogram_count == len(requests)


# ------------------------------------------------------------------ property: never breaks

VALID_QUERIES = [
    mint(),
    mint("https://a.mall.example/x?y=1#z", position_id="pos", sub_ids=("s1",)),
    mint(expires_at=int(time.time()) - 100),
    mint("https://evil.example/"),
    mint(ring=OTHER_KID_RING),
]
GOOD_COOKIE = b"cps_attr=" + SEALER.seal(
    Attribution("visitor-h", "P", "C", "0" * 28, 1, 2)).encode()


@st.composite
def queries(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["random", "valid", "mutated"]))
    if kind == "random":
        return draw(st.binary(max_size=600))
    base = draw(st.sampled_from(VALID_QUERIES))
    if kind == "valid":
        return base
    at = draw(st.integers(0, len(base)))
    cut = draw(st.integers(0, 6))
    junk = draw(st.binary(max_size=6))
    return base[:at] + junk + base[at + cut:]


header_value = st.one_of(st.none(), st.binary(max_size=120))
cookie_value = st.one_of(st.none(), st.binary(max_size=120), st.just(GOOD_COOKIE),
                         st.builds(lambda b: b"a=1; cps_attr=" + b, st.binary(max_size=80)),
                         st.builds(lambda b: GOOD_COOKIE + b, st.binary(max_size=8)))


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    query=queries(),
    method=st.sampled_from(["GET", "GET", "GET", "HEAD", "POST", "OPTIONS"]),
    ua=header_value,
    cookie=cookie_value,
    xff=header_value,
    dest=st.one_of(st.none(), st.sampled_from([b"document", b"image", b"empty"]),
                   st.binary(max_size=20)),
    purpose=header_value,
    referer=header_value,
    safe_landing=st.booleans(),
)
def test_endpoint_never_breaks(query: bytes, method: str, ua: bytes | None,
                               cookie: bytes | None, xff: bytes | None, dest: bytes | None,
                               purpose: bytes | None, referer: bytes | None,
                               safe_landing: bool) -> None:
    overrides: dict[str, Any] = {"forwarded_hops": 1, "verdict_header": True,
                                 "rate_limit_per_s": 1, "rate_limit_burst": 2}
    if safe_landing:
        overrides["safe_landing_url"] = "https://shop.example.com/oops"
    h = Harness(overrides)
    headers = [(name, value) for name, value in [
        (b"cookie", cookie), (b"x-forwarded-for", xff), (b"sec-fetch-dest", dest),
        (b"sec-purpose", purpose), (b"referer", referer)] if value is not None]
    allow = h.settings.allowed_target_hosts
    for _ in range(3):  # cold cache, then cached / duplicate / rate-limited
        r = h.request(query, method=method, ua=ua, headers=headers)
        assert_complete_response(r)
        assert r.status in (302, 400, 403, 405, 429)
        assert len(r.events) == 1
        event = ClickEvent.from_json(r.record[2])
        verdict = r.header(b"x-cps-verdict")
        assert verdict is not None
        assert verdict.decode() == event.verdict.value
        location = r.location
        if location is not None:
            assert r.status == 302
            assert_allowed_location(allow, location)
            assert urlsplit(location).hostname in ("shop.example.com", "a.mall.example")
        else:
            assert r.status != 302
        if r.header(b"set-cookie") is not None:
            assert event.verdict in (Verdict.VALID, Verdict.DUPLICATE)
            assert r.cookie_value is not None
            assert SEALER.unseal(r.cookie_value) is not None
        if event.verdict in (Verdict.VALID, Verdict.DUPLICATE):
            assert r.header(b"set-cookie") is not None
            assert method == "GET"
        if event.verdict is Verdict.VALID:
            assert r.tracking()["cps_click_id"] == event.click_id
    assert len(h.events) == 3
