"""The redirect endpoint: a raw ASGI callable, because it is the hot path.

Everything that depends only on the link (signature check, target check,
the Location pieces, the event fields) is computed once per distinct link and
cached, keyed by the raw query bytes: during a live-stream spike thousands of
buyers click the *same* link.  Per request there remains one header scan, a
few dictionary lookups, one AES-GCM seal, one JSON dump and a deque append.

Verdicts, in the order they are decided:

    rate_limited                                                   429 (any method)
    malformed (method other than GET/HEAD, HTTP/0.9 request line)  405 / 400
    malformed / unknown_key / bad_signature / target_not_allowed   4xx or safe landing page
    expired                 302 to the target, no cookie
    bot                     302 to the target, no cookie (crawlers, previews, script
                            clients, HEAD, prefetch, sub-resource loads)
    duplicate               the first click's exact answer again
    valid                   302 to target + tracking params, sealed cookie

Work before the per-IP limiter is the same small, crypto-free amount for
every request: one dict of the headers, at most ``forwarded_hops`` splits of
X-Forwarded-For, three clock reads and one hash.  No link HMAC, no cookie
AES-GCM, not even a 405 runs before it, so a flood of any method from one
address is answered 429 after its burst.  After it, a request
unseals at most MAX_ATTRIBUTION_COOKIES (3) attribution cookies, each at most
1 KiB: a Cookie header with 500 ``cps_attr`` values costs 3 AES-GCM opens,
not 500 (~9 ms of CPU).

Every request to this endpoint emits exactly one click event.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from contracts.clicks import MAX_RAW_QUERY, Verdict, click_record, event_head, event_tail
from contracts.cookie import CookieSealer
from contracts.ids import click_id_ms, new_click_and_visitor, new_click_id
from contracts.links import LinkCheck, verify_query
from contracts.records import Record
from contracts.targets import TRACKING_PARAMS
from edge import telemetry
from edge.dedup import DuplicateWindow
from edge.ratelimit import IpRateLimiter
from edge.requester import RequesterFilter, fetch_reason
from edge.settings import EdgeSettings

Scope = MutableMapping[str, Any]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

LINK_CACHE_GENERATION = 5000
# Attribution cookies tried per request, in header order.  More than one,
# because a browser can hold several of that name: a stale one from an older
# Domain (host-only vs ``.shop.example``) or sealed under a retired cookie key
# comes first when it is older.  Not all of them: each is an AES-GCM open
# (10-20 us), and the client chooses how many it sends.
MAX_ATTRIBUTION_COOKIES = 3

_STATUS = {
    Verdict.MALFORMED: 400,
    Verdict.UNKNOWN_KEY: 403,
    Verdict.BAD_SIGNATURE: 403,
    Verdict.TARGET_NOT_ALLOWED: 403,
}
_BODY_END: dict[str, Any] = {"type": "http.response.body", "body": b"", "more_body": False}
_NO_STORE = (b"cache-control", b"no-store")
_EMPTY = (b"content-length", b"0")
_TOO_MANY = {"type": "http.response.body", "body": b"too many requests\n"}


@dataclass(frozen=True, slots=True)
class CachedLink:
    """A verified link with everything a request needs, computed once."""

    expires_at_ms: int
    sig: str
    promoter_id: str
    channel_id: str
    plain_location: bytes
    location_head: bytes  # ...target?...&cps_click_id=
    location_tail: bytes  # &cps_promoter=..&cps_channel=..[#fragment]
    event_head: bytes  # the link's event fields as an open JSON object: b'{...,'


def _cache_entry(check: LinkCheck) -> CachedLink:
    link = check.link
    assert link is not None
    assert check.sig is not None
    base, hash_mark, fragment = link.target.partition("#")
    sep = "" if base.endswith(("?", "&")) else ("&" if "?" in base else "?")
    tail = (f"&{TRACKING_PARAMS[1]}={quote(link.promoter_id, safe='')}"
            f"&{TRACKING_PARAMS[2]}={quote(link.channel_id, safe='')}{hash_mark}{fragment}")
    return CachedLink(
        expires_at_ms=link.expires_at * 1000,
        sig=check.sig,
        promoter_id=link.promoter_id,
        channel_id=link.channel_id,
        plain_location=link.target.encode("ascii"),
        location_head=f"{base}{sep}{TRACKING_PARAMS[0]}=".encode("ascii"),
        location_tail=tail.encode("ascii"),
        event_head=event_head(link, sig=check.sig, kid=check.kid),
    )


def _head_of(check: LinkCheck | None, query: bytes) -> bytes:
    """The event head of a refused request: the link's fields if its signature held."""
    if check is not None and check.link is not None:
        return event_head(check.link, sig=check.sig, kid=check.kid)
    return event_head(raw_query=_text(query, MAX_RAW_QUERY))


class RedirectEndpoint:
    """``await endpoint(scope, send)`` answers one redirect request."""

    def __init__(self, settings: EdgeSettings, submit: Callable[[Record], None]) -> None:
        self._submit = submit
        self._ring = settings.link_keys
        self._allow = settings.allowed_target_hosts
        self._sealer = CookieSealer(settings.cookie_keys)
        self._requesters = RequesterFilter(settings.bot_user_agents.split(","))
        self._dedup = DuplicateWindow(settings.duplicate_window_s, settings.duplicate_max_entries)
        self._limiter = IpRateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
        self._rate_limited = self._limiter.enabled
        self._hops = settings.forwarded_hops
        self._window_ms = settings.attribution_window_s * 1000
        self._safe_landing = settings.safe_landing_url
        self._cookie_key = settings.cookie_name.encode("ascii") + b"="
        attrs = f"; Max-Age={settings.attribution_window_s}; Path=/"
        if settings.cookie_domain:
            attrs += f"; Domain={settings.cookie_domain}"
        attrs += "; HttpOnly" + ("; Secure" if settings.cookie_secure else "") + "; SameSite=Lax"
        self._cookie_attrs = attrs.encode("ascii")
        # Headers that only depend on the verdict, built once.
        self._extra = {v: ((b"x-cps-verdict", v.value.encode("ascii")),)
                       if settings.verdict_header else () for v in Verdict}
        self._tail = {v: (_NO_STORE, _EMPTY, *self._extra[v]) for v in Verdict}
        # Two generations approximate an LRU at O(1): a miss in `_links` that
        # hits `_old_links` is promoted; a full `_links` becomes `_old_links`.
        self._links: dict[bytes, CachedLink] = {}
        self._old_links: dict[bytes, CachedLink] = {}
        self._slots = telemetry.REGISTRY.slots
        self._verdict_slot = {v: telemetry.requests.index(v.value) for v in Verdict}
        self._verdict_text = {v: v.value for v in Verdict}
        self._observe = telemetry.request_seconds.observe_ns

    @property
    def cached_links(self) -> int:
        return len(self._links) + len(self._old_links)

    def _lookup(self, query: bytes) -> CachedLink | LinkCheck:
        cached = self._old_links.get(query)
        if cached is None:
            check = verify_query(query, self._ring, self._allow)
            if check.verdict is not Verdict.VALID:
                return check
            cached = _cache_entry(check)
        if len(self._links) >= LINK_CACHE_GENERATION:
            self._old_links = self._links
            self._links = {}
        self._links[query] = cached
        return cached

    async def __call__(self, scope: Scope, send: Send) -> None:
        started = time.perf_counter_ns()
        query: bytes = scope["query_string"]
        headers = dict(scope["headers"])
        client = scope.get("client")
        ip: str = client[0] if client else ""
        if self._hops:
            ip = _forwarded_ip(headers.get(b"x-forwarded-for", b""), self._hops) or ip
        now_ms = time.time_ns() // 1_000_000

        # First, whatever the method: a flooding client must cost us no HMAC, no
        # cookie unsealing, not even a 405.
        if self._rate_limited and not self._limiter.allow(ip, time.monotonic()):
            await self._too_many(send, query, now_ms, ip, headers)
            return self._done(started, Verdict.RATE_LIMITED)
        method: str = scope["method"]
        if (method != "GET" and method != "HEAD") or scope.get("http_version") == "0.9":
            await self._bad_request(send, method, query, headers, ip, now_ms)
            return self._done(started, Verdict.MALFORMED)
        link = self._links.get(query)
        if link is None:
            found = self._lookup(query)
            if isinstance(found, LinkCheck):
                verdict = found.verdict
                await self._refuse(send, verdict, found.reason, found, query, headers, ip, now_ms)
                return self._done(started, verdict)
            link = found

        # Classify, then answer: every remaining verdict is a 302 and one event.
        if link.expires_at_ms <= now_ms:
            verdict, reason = Verdict.EXPIRED, "link expired"
        else:
            reason = fetch_reason(method, headers.get(b"sec-fetch-dest", b""),
                                  headers.get(b"sec-purpose", b"") or headers.get(b"purpose", b"")
                                  or headers.get(b"x-purpose", b"")) \
                or self._requesters.bot_reason(headers.get(b"user-agent", b"")) or ""
            verdict = Verdict.BOT if reason else Verdict.VALID
        if verdict is Verdict.VALID:
            start, verdict = self._click(link, headers, ip, now_ms)
        else:
            start = self._plain_redirect(link, verdict, reason, headers, ip, now_ms)
        await send(start)
        await send(_BODY_END)
        # `_done` inlined: the click path's only extra call is `_click`.
        self._slots[self._verdict_slot[verdict]] += 1
        self._observe(time.perf_counter_ns() - started)

    def _click(self, link: CachedLink, headers: dict[bytes, bytes], ip: str,
               now_ms: int) -> tuple[MutableMapping[str, Any], Verdict]:
        """A possible buyer's answer (valid, or duplicate of the first) and its verdict."""
        visitor = self._visitor(headers)
        # A buyer with a genuine cookie is known by it; without one, by address
        # and browser.  Never both: two buyers behind one NAT with the same
        # browser must not share a cookie.
        key = hash((visitor, link.sig)) if visitor else \
            hash((ip, headers.get(b"user-agent", b""), link.sig))
        first = self._dedup.get(key, now_ms)
        if first is not None:
            verdict = Verdict.DUPLICATE
            click_id, buyer = first
            click_ms = click_id_ms(click_id)
            self._emit(link.event_head, verdict, f"repeat of {click_id}", now_ms, buyer, ip,
                       headers)
        else:
            verdict = Verdict.VALID
            click_ms = now_ms
            if visitor:
                click_id, buyer = new_click_id(now_ms), visitor
            else:
                click_id, buyer = new_click_and_visitor(now_ms)
            # Without a cookie, also remember the buyer by the visitor id this
            # answer hands out: the reload will carry it.
            self._dedup.remember(key, click_id, buyer, now_ms,
                                 None if visitor else hash((buyer, link.sig)))
            self._emit(link.event_head, verdict, "", now_ms, buyer, ip, headers, click_id)
        set_cookie = self._cookie_key + self._sealer.seal_fields(
            buyer, link.promoter_id, link.channel_id, click_id, click_ms,
            click_ms + self._window_ms) + self._cookie_attrs
        return {"type": "http.response.start", "status": 302, "headers": [
            (b"location", link.location_head + click_id.encode("ascii") + link.location_tail),
            (b"set-cookie", set_cookie), *self._tail[verdict]]}, verdict

    def _plain_redirect(self, link: CachedLink, verdict: Verdict, reason: str,
                        headers: dict[bytes, bytes], ip: str,
                        now_ms: int) -> MutableMapping[str, Any]:
        """Expired or bot: the plain target, no cookie; a known visitor is still recorded."""
        self._emit(link.event_head, verdict, reason, now_ms, self._visitor(headers) or "",
                   ip, headers)
        return {"type": "http.response.start", "status": 302, "headers": [
            (b"location", link.plain_location), *self._tail[verdict]]}

    async def _bad_request(self, send: Send, method: str, query: bytes,
                           headers: dict[bytes, bytes], ip: str, now_ms: int) -> None:
        if method != "GET" and method != "HEAD":
            await self._refuse(send, Verdict.MALFORMED, f"method {method[:10]} not allowed",
                               None, query, headers, ip, now_ms, status=405)
        else:
            # What a raw CR/LF inside the request line parses as: a smuggling attempt.
            await self._refuse(send, Verdict.MALFORMED, "request line is not HTTP/1.x", None,
                               query, headers, ip, now_ms, status=400)

    def _done(self, started: int, verdict: Verdict) -> None:
        self._slots[self._verdict_slot[verdict]] += 1
        self._observe(time.perf_counter_ns() - started)

    def _visitor(self, headers: dict[bytes, bytes]) -> str | None:
        """The visitor id in a genuine attribution cookie, if the request carries one.

        Of several cookies of that name the first genuine one counts, among the
        first MAX_ATTRIBUTION_COOKIES: the rest are not unsealed.  The scan for
        the name is linear in the header's length.
        """
        cookies = headers.get(b"cookie")
        if not cookies:
            return None
        name = self._cookie_key
        at = cookies.find(name)
        tries = MAX_ATTRIBUTION_COOKIES
        while at != -1:
            if at == 0 or cookies[at - 1] in b" ;":
                start = at + len(name)
                end = cookies.find(b";", start)
                value = cookies[start:] if end == -1 else cookies[start:end]
                found = self._sealer.unseal(value.strip().decode("latin-1"))
                if found is not None:
                    return found.visitor_id
                tries -= 1
                if not tries:
                    return None
            at = cookies.find(name, at + 1)
        return None

    def _emit(self, head: bytes, verdict: Verdict, reason: str, now_ms: int, buyer: str,
              ip: str, headers: dict[bytes, bytes], click_id: str | None = None) -> None:
        tail = event_tail(click_id or new_click_id(now_ms), now_ms, self._verdict_text[verdict],
                          reason, buyer, ip, headers.get(b"user-agent", b""),
                          headers.get(b"referer", b""))
        self._submit(click_record(head, tail, now_ms, buyer))

    async def _too_many(self, send: Send, query: bytes, now_ms: int, ip: str,
                        headers: dict[bytes, bytes]) -> None:
        link = self._links.get(query) or self._old_links.get(query)
        head = link.event_head if link is not None else _head_of(None, query)
        self._emit(head, Verdict.RATE_LIMITED, "per-IP rate limit", now_ms, "", ip, headers)
        await send({"type": "http.response.start", "status": 429, "headers": [
            (b"retry-after", b"1"), _NO_STORE, (b"content-type", b"text/plain"),
            (b"content-length", b"18"), *self._extra[Verdict.RATE_LIMITED]]})
        await send(_TOO_MANY)

    async def _refuse(self, send: Send, verdict: Verdict, reason: str, check: LinkCheck | None,
                      query: bytes, headers: dict[bytes, bytes], ip: str, now_ms: int,
                      status: int | None = None) -> None:
        self._emit(_head_of(check, query), verdict, reason, now_ms, self._visitor(headers) or "",
                   ip, headers)
        extra = self._extra[verdict]
        if self._safe_landing and status is None:
            base, mark, fragment = self._safe_landing.partition("#")
            sep = "&" if "?" in base else "?"
            location = f"{base}{sep}reason={verdict.value}{mark}{fragment}".encode("ascii")
            await send({"type": "http.response.start", "status": 302,
                        "headers": [(b"location", location), _NO_STORE, _EMPTY, *extra]})
            await send(_BODY_END)
            return
        body = f"invalid promotion link: {verdict.value}: {reason}\n".encode()
        headers_out = [(b"content-type", b"text/plain; charset=utf-8"),
                       (b"x-content-type-options", b"nosniff"), _NO_STORE,
                       (b"content-length", str(len(body)).encode()), *extra]
        if status == 405:
            headers_out.append((b"allow", b"GET, HEAD"))
        await send({"type": "http.response.start", "status": status or _STATUS[verdict],
                    "headers": headers_out})
        await send({"type": "http.response.body", "body": body})


def _text(raw: bytes, limit: int) -> str:
    return raw[:limit].decode("utf-8", "replace")


def _forwarded_ip(header: bytes, hops: int) -> str | None:
    """The client address ``hops`` proxies back in X-Forwarded-For (trusted proxies only)."""
    if hops == 1:
        candidate = header.rpartition(b",")[2].strip()
    else:
        # At most `hops` splits from the right: a long header is not cut into
        # pieces before the rate limit.
        parts = header.rsplit(b",", hops)
        if len(parts) < hops:
            return None
        candidate = parts[-hops].strip()
    # Some proxies append the client port; one client must be one bucket.
    if candidate.startswith(b"["):
        candidate = candidate[1:].partition(b"]")[0]
    elif candidate.count(b":") == 1:
        candidate = candidate.partition(b":")[0]
    if not candidate or len(candidate) > 45 or not candidate.isascii():
        return None
    return candidate.decode("ascii")
