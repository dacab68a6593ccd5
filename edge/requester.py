"""Who is asking: a buyer's browser, or something that must not get a cookie.

Link-preview fetchers (chat apps drawing a card for a pasted link), crawlers,
script clients (curl, wget, HTTPie, Postman, HTTP libraries: someone testing a
link is not shopping), prefetches and ``HEAD`` checks get the redirect but no
cookie and no billable click.  So do sub-resource loads (``<img src=link>``,
iframes, scripts): a page that embeds promotion links as images is the classic
cookie-stuffing trick, and browsers label such requests with ``Sec-Fetch-Dest``.

A User-Agent is matched on its first 512 bytes, lowercased, against ~50
literal substrings (DEFAULT_BOT_PATTERNS plus ``CPS_BOT_USER_AGENTS``); the
verdicts of up to 4096 distinct User-Agents are remembered, so a repeat costs
one dict lookup.  A pattern is a product token no browser or in-app web view
carries: a false match silently stops billing that app's buyers.
"""

from __future__ import annotations

from collections.abc import Iterable

# Lowercase substrings of User-Agent values of fetchers that are not buyers.
DEFAULT_BOT_PATTERNS: tuple[str, ...] = (
    # Crawlers and link-preview fetchers.
    "bot", "crawler", "spider", "slurp", "preview", "facebookexternalhit", "facebookcatalog",
    "whatsapp", "skypeuripreview", "embedly", "iframely", "quora link preview",
    "vkshare", "w3c_validator", "outbrain", "nuzzel", "bitlypreview",
    "google-pagerenderer", "google-read-aloud", "feedfetcher", "mediapartners-google",
    # Headless browsers and monitors.
    "headlesschrome", "phantomjs", "lighthouse", "pingdom", "uptimerobot", "statuscake",
    # Script clients and HTTP libraries: a person sending these is testing, not
    # shopping, and no shop page opens from them.  Each is a product token no
    # browser or in-app web view carries ("curl/" also covers libcurl/ and PycURL/).
    "httrack", "wget", "scrapy", "go-http-client", "okhttp", "java/", "libwww",
    "python-requests", "python-urllib", "python-httpx", "aiohttp", "node-fetch", "axios/",
    "curl/", "httpie/", "powershell/", "postmanruntime/", "insomnia/", "apache-httpclient",
    "guzzlehttp", "rest-client/", "faraday v", "http-tiny/", "lwp::", "undici",
)
# Only the head of a User-Agent is matched and remembered: the cache stays
# bounded in bytes whatever header sizes the server admits.
_UA_PREFIX = 512
# The Sec-Fetch-Dest of a top-level navigation.  Anything else (image, iframe,
# script, and "empty" for fetch()/XHR) is some page loading our link for itself.
# Browsers too old to send the header are let through.
NAVIGATION_DESTS = frozenset({b"document"})
_UA_CACHE_MAX = 4096


class RequesterFilter:
    """Classifies a request as a possible buyer or not; remembers recent User-Agents."""

    __slots__ = ("_cache", "_words")

    def __init__(self, extra_patterns: Iterable[str] = ()) -> None:
        words = [*DEFAULT_BOT_PATTERNS, *(p.strip().lower() for p in extra_patterns if p.strip())]
        # Plain substring tests: a regex alternation of these words costs ~5x more
        # per User-Agent, since the engine tries every branch at every position.
        self._words = tuple(w for w in dict.fromkeys(words) if w != "bot")
        # Most traffic comes from a few thousand distinct User-Agents: remember verdicts.
        self._cache: dict[bytes, str | None] = {}

    def bot_reason(self, user_agent: bytes) -> str | None:
        """Why this User-Agent is not a buyer, or None if it may be one."""
        user_agent = user_agent[:_UA_PREFIX]
        cache = self._cache
        reason = cache.get(user_agent, False)
        if reason is not False:
            return reason  # type: ignore[return-value]
        if not user_agent:
            reason = "no user agent"
        else:
            reason = _match(user_agent.decode("latin-1").lower(), self._words)
        if len(cache) >= _UA_CACHE_MAX:
            cache.clear()
        cache[user_agent] = reason
        return reason


def _match(ua: str, words: tuple[str, ...]) -> str | None:
    at = ua.find("bot")
    while at != -1:
        # "bot" also ends the name of CUBOT phones, whose owners are buyers.
        if at < 2 or ua[at - 2:at] != "cu":
            return "user agent matches 'bot'"
        at = ua.find("bot", at + 3)
    for word in words:
        if word in ua:
            return f"user agent matches {word!r}"
    return None


def fetch_reason(method: str, sec_fetch_dest: bytes, purpose: bytes) -> str | None:
    """Why the request itself is not a click (HEAD, prefetch, sub-resource), or None."""
    if method == "HEAD":
        return "HEAD request"
    if purpose and (b"prefetch" in purpose or b"preview" in purpose or b"prerender" in purpose):
        return "prefetch"
    if sec_fetch_dest and sec_fetch_dest not in NAVIGATION_DESTS:
        return "sub-resource load (sec-fetch-dest " + sec_fetch_dest.decode("latin-1")[:20] + ")"
    return None
