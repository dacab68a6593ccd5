"""Load-testing scenarios for the redirect edge (locust, ``FastHttpUser``).

Run headless against an edge (the CSV/HTML reports land in ``bench/out/``)::

    eval "$(.venv/bin/cps-dev env)"      # the dev keys + allow-list, after ./run.sh started once
    .venv/bin/locust -f bench/locustfile.py --headless --host http://127.0.0.1:8000 \\
        --csv bench/out/locust --csv-full-history --html bench/out/locust.html

    # the other shape, smaller and shorter:
    CPS_LOAD_SHAPE=steady CPS_LOAD_PEAK_USERS=50 CPS_LOAD_DURATION_S=60 \\
        .venv/bin/locust -f bench/locustfile.py --headless --host http://127.0.0.1:8000 \\
        --csv bench/out/locust-steady

The edge under test needs:

* the **same** ``CPS_LINK_KEYS`` and ``CPS_ALLOWED_TARGET_HOSTS`` as this
  process (links are minted here, at start-up; ``cps-dev env`` prints the dev
  stack's; ``CPS_ALLOW_HTTP_TARGETS`` and ``CPS_REDIRECT_PATH`` are honoured too);
* ``CPS_FORWARDED_HOPS=1``: every request names its buyer in
  ``X-Forwarded-For`` (a fresh address per buyer).  Without it the edge sees
  every buyer as 127.0.0.1: fresh clicks turn into duplicates and the per-IP
  rate limit answers 429;
* ideally ``CPS_VERDICT_HEADER=true`` (the dev stack sets it): then every
  answer's ``x-cps-verdict`` is checked too.

So, for the dev stack: ``CPS_FORWARDED_HOPS=1 ./run.sh`` (exported ``CPS_*``
variables win over the dev defaults).  With ``--workers K`` > 1, note that
duplicate detection is per worker process: a repeat click is recognised only
if it reaches the worker that saw the first click (each locust user keeps one
keep-alive connection, so it normally does).  The edge's duplicate table is
direct-mapped (``edge/dedup.py``): every new click overwrites one slot, so at
high click rates a few repeats are answered as new ``valid`` clicks; they show
up as ``duplicate`` failures ("counted as a new valid click").

Traffic: each locust user is a stream of buyers arriving from live streams
and chat groups.  Every request is one of these kinds, named so locust's
statistics split by kind (``--show-task-ratio`` shows the mix):

========== ================================================= ==========================
name       what                                              passes when
========== ================================================= ==========================
valid      a new buyer (fresh address, a buyer User-Agent)   302, Set-Cookie, Location on
           clicks a live link; link popularity is Zipf-like  an allowed host with
           (one streamer's pinned product gets hammered)     ``cps_click_id=`` and the
                                                             link's ``cps_promoter``
duplicate  the buyer of one of this user's last few clicks   302 with the *first* click's
           clicks the same link again: same address and      click id, Set-Cookie
           User-Agent without cookie, or sending back the
           cookie it got (then half the time from a new
           address: wifi to 4G)
expired    a new buyer on a link minted already expired      302 to the plain target,
                                                             no Set-Cookie
tampered   a link with one parameter changed (promoter id,   403
           expiry, target host, signature)
bot        a crawler / link-preview fetcher
           (``bench/bot_user_agents.txt``), or a browser     302 to the plain target,
           prefetch (``Sec-Purpose``) or an ``<img>`` load   no Set-Cookie
           (``Sec-Fetch-Dest: image``)
head       ``HEAD`` by a buyer User-Agent                    302, no Set-Cookie
========== ================================================= ==========================

With the verdict header the expected ``x-cps-verdict`` is ``valid``,
``duplicate``, ``expired``, ``bad_signature``, ``bot``, ``bot``.  Redirects are
never followed.  A 429 is reported as a failure naming the load-test set-up
(not the edge) as the cause.

Environment (defaults in brackets):

* ``CPS_LINK_KEYS`` [required], ``CPS_ALLOWED_TARGET_HOSTS`` [shop.example.com]:
  links are signed with the ring's first key and target the first
  non-wildcard allowed host (and ``m.`` + the first wildcard's domain);
* ``CPS_LOAD_PROMOTERS`` [200], ``CPS_LOAD_LINKS`` [2000] live links,
  ``CPS_LOAD_EXPIRED_LINKS`` [links / 10], ``CPS_LOAD_LINK_SKEW`` [1.0]
  (Zipf exponent of link popularity; 0 = uniform);
* the mix, relative whole-number weights: ``CPS_LOAD_SHARE_VALID`` [80],
  ``CPS_LOAD_SHARE_DUPLICATE`` [8], ``CPS_LOAD_SHARE_EXPIRED`` [4],
  ``CPS_LOAD_SHARE_TAMPERED`` [3], ``CPS_LOAD_SHARE_BOT`` [4],
  ``CPS_LOAD_SHARE_HEAD`` [1].  A user's first repeat, before it clicked
  anything, is a fresh click instead;
* ``CPS_LOAD_WAIT_MIN_S`` [0.05], ``CPS_LOAD_WAIT_MAX_S`` [0.5]: pause between a
  user's requests; ``CPS_LOAD_TIMEOUT_S`` [10] per request;
* ``CPS_DUPLICATE_WINDOW_S`` [30] (the edge's): repeats are sent well within it;
* the shape, ``CPS_LOAD_SHAPE`` [spike]:

  - ``spike`` ("live-stream spike"), over ``CPS_LOAD_DURATION_S`` [120] s:
    ``CPS_LOAD_IDLE_USERS`` [5] users for the first 15 %, then a burst to
    ``CPS_LOAD_PEAK_USERS`` [200] within ``CPS_LOAD_RAMP_S`` [3] s (the host
    pins the product), a hold until 60 %, a linear decay back to the idle
    trickle until 85 %, idle to the end;
  - ``steady``: ``CPS_LOAD_PEAK_USERS`` users, started within
    ``CPS_LOAD_RAMP_S`` s, for ``CPS_LOAD_DURATION_S`` s.

  Exactly one ``LoadTestShape`` subclass is active: locust uses the shape
  classes whose ``abstract`` attribute is false, and each class here sets it
  from ``CPS_LOAD_SHAPE`` at import time.  ``--users``, ``--spawn-rate`` and
  ``--run-time`` are ignored (locust warns), the shape decides;
* pass/fail, checked when locust quits (exit code 1, reasons logged at ERROR):
  failure ratio above ``CPS_LOAD_MAX_FAILURE_RATIO`` [0.01], any 5xx, any
  429, no request at all, or the p99 response time of ``valid`` above
  ``CPS_LOAD_MAX_P99_MS`` [200] (locust's own client is slow; the latency
  figures that matter come from wrk in the benchmark harness).

``bench/user_agents.txt`` (buyers) and ``bench/bot_user_agents.txt`` (not
buyers) are checked at start-up against the edge's own ``RequesterFilter``
(plus ``CPS_BOT_USER_AGENTS``): a list that disagrees with the edge stops the
run before it starts.  ``CPS_LOAD_USER_AGENTS`` / ``CPS_LOAD_BOT_USER_AGENTS``
name other files.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import random
import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from locust import LoadTestShape, between, events, task
from locust.contrib.fasthttp import FastHttpUser, ResponseContextManager
from locust.env import Environment
from locust.runners import WorkerRunner
from locust.stats import RequestStats

from contracts.keys import KeyConfigError, KeyRing
from contracts.links import LinkError, mint_link
from contracts.targets import AllowList, TargetError, normalize_target
from edge.requester import RequesterFilter

log = logging.getLogger("cps.load")

HERE = Path(__file__).resolve().parent
KINDS = ("valid", "duplicate", "expired", "tampered", "bot", "head")
VERDICTS = {"valid": "valid", "duplicate": "duplicate", "expired": "expired",
            "tampered": "bad_signature", "bot": "bot", "head": "bot"}
RATE_LIMITED = ("HTTP 429 rate limited: a load-test set-up error, not an edge failure "
                "(run the edge with CPS_FORWARDED_HOPS=1, or raise CPS_RATE_LIMIT_PER_S)")
_SERVER_ERROR = re.compile(r"HTTP 5\d\d server error")
_CLICK_ID = re.compile(r"[?&]cps_click_id=([0-9a-f]{28})(?:[&#]|$)")


class LoadConfigError(SystemExit):
    """A bad load-test setting: stops locust with a message naming the variable."""

    def __init__(self, message: str) -> None:
        super().__init__(f"locustfile: {message}")


def _env_number(name: str, default: float, *, minimum: float = 0) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise LoadConfigError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise LoadConfigError(f"{name}={raw!r} must be at least {minimum:g}")
    return value


def _env_int(name: str, default: int, *, minimum: int = 0) -> int:
    value = _env_number(name, default, minimum=minimum)
    if value != int(value):
        raise LoadConfigError(f"{name} must be a whole number")
    return int(value)


# -- settings read at import time (they shape the classes below) -------------

SHAPE = os.environ.get("CPS_LOAD_SHAPE", "spike").strip().lower() or "spike"
if SHAPE not in ("spike", "steady"):
    raise LoadConfigError(f"CPS_LOAD_SHAPE={SHAPE!r} must be 'spike' or 'steady'")
PEAK_USERS = _env_int("CPS_LOAD_PEAK_USERS", 200, minimum=1)
IDLE_USERS = min(_env_int("CPS_LOAD_IDLE_USERS", 5, minimum=1), PEAK_USERS)
DURATION_S = _env_number("CPS_LOAD_DURATION_S", 120, minimum=1)
RAMP_S = _env_number("CPS_LOAD_RAMP_S", 3, minimum=0.1)
SHARES = {kind: _env_int(f"CPS_LOAD_SHARE_{kind.upper()}", default)
          for kind, default in zip(KINDS, (80, 8, 4, 3, 4, 1), strict=True)}
if not any(SHARES.values()):
    raise LoadConfigError("every CPS_LOAD_SHARE_* is 0: nothing to send")
WAIT_MIN_S = _env_number("CPS_LOAD_WAIT_MIN_S", 0.05)
WAIT_MAX_S = max(WAIT_MIN_S, _env_number("CPS_LOAD_WAIT_MAX_S", 0.5))
TIMEOUT_S = _env_number("CPS_LOAD_TIMEOUT_S", 10, minimum=0.1)
MAX_FAILURE_RATIO = _env_number("CPS_LOAD_MAX_FAILURE_RATIO", 0.01)
MAX_P99_MS = _env_number("CPS_LOAD_MAX_P99_MS", 200)
# Repeats go out well inside the edge's duplicate window.
REPEAT_MAX_AGE_S = min(10.0, _env_number("CPS_DUPLICATE_WINDOW_S", 30) / 2)
COOKIE_NAME = os.environ.get("CPS_COOKIE_NAME", "").strip() or "cps_attr"


# -- the link catalog, minted once per process --------------------------------

@dataclass(frozen=True, slots=True)
class PromoLink:
    path: str  # request target: redirect path + signed query
    promoter_id: str
    target: str  # what the edge redirects to when it adds nothing


@dataclass(frozen=True, slots=True)
class Catalog:
    live: tuple[PromoLink, ...]
    live_weights: tuple[float, ...]  # cumulative, for random.choices
    expired: tuple[PromoLink, ...]
    promoters: tuple[str, ...]
    allow: AllowList
    buyer_agents: tuple[str, ...]
    bot_agents: tuple[str, ...]

    def pick_live(self) -> PromoLink:
        return random.choices(self.live, cum_weights=self.live_weights)[0]


CHANNELS = ("live", "wechat-group", "moments", "douyin-video", "xhs-note", "weibo-post",
            "kuaishou-live")
POSITIONS = (None, None, "pinned-comment", "cart-1", "cart-2", "bio-link", "qr-poster")
CAMPAIGNS = ("618-warmup", "double11", "新品首发", "直播间专享", "members-day")


def _targets(allow_text: str) -> list[str]:
    """Landing pages on the allow-list: the first plain host, and a subdomain of a wildcard."""
    entries = [e.strip().lower() for e in allow_text.split(",") if e.strip()]
    hosts = [e for e in entries if not e.startswith("*.")][:1]
    hosts += ["m." + e[2:] for e in entries if e.startswith("*.")][:1]
    return hosts or ["shop.example.com"]


def _read_agents(env: str, default: str, *, bots: bool, flt: RequesterFilter) -> tuple[str, ...]:
    path = Path(os.environ.get(env) or HERE / default)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise LoadConfigError(f"cannot read {path} ({env}): {err}") from None
    agents = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not agents:
        raise LoadConfigError(f"{path} holds no User-Agent")
    for n, ua in enumerate(agents, 1):
        reason = flt.bot_reason(ua.encode("latin-1", "replace"))
        if bots and reason is None:
            raise LoadConfigError(f"{path} entry {n} is not a bot to the edge: {ua!r}")
        if not bots and reason is not None:
            raise LoadConfigError(f"{path} entry {n} is a bot to the edge ({reason}): {ua!r}")
    return tuple(agents)


@functools.cache
def catalog() -> Catalog:
    keys_text = os.environ.get("CPS_LINK_KEYS", "")
    if not keys_text.strip():
        raise LoadConfigError('CPS_LINK_KEYS is not set: eval "$(.venv/bin/cps-dev env)" or '
                              "export the edge's link key ring")
    try:
        ring = KeyRing.parse(keys_text, what="CPS_LINK_KEYS")
    except KeyConfigError as err:
        raise LoadConfigError(str(err)) from None
    allow_text = os.environ.get("CPS_ALLOWED_TARGET_HOSTS", "").strip() or "shop.example.com"
    allow_http = os.environ.get("CPS_ALLOW_HTTP_TARGETS", "").strip().lower() in (
        "1", "true", "yes", "on")
    try:
        allow = AllowList.parse(allow_text, allow_http=allow_http)
    except ValueError as err:
        raise LoadConfigError(f"CPS_ALLOWED_TARGET_HOSTS: {err}") from None
    base = "http://edge" + (os.environ.get("CPS_REDIRECT_PATH", "").strip() or "/c")
    n_promoters = _env_int("CPS_LOAD_PROMOTERS", 200, minimum=1)
    n_links = _env_int("CPS_LOAD_LINKS", 2000, minimum=1)
    n_expired = _env_int("CPS_LOAD_EXPIRED_LINKS", max(1, n_links // 10), minimum=1)
    skew = _env_number("CPS_LOAD_LINK_SKEW", 1.0)
    hosts = _targets(allow_text)
    promoters = tuple(f"kol-{i:05d}" for i in range(n_promoters))
    rng = random.Random(20240618)  # the same catalog every run
    now = int(time.time())

    def make(i: int, expired: bool) -> PromoLink:
        promoter = promoters[i % n_promoters]
        product = f"sku-{rng.randrange(1, 50_000)}"
        target = f"https://{hosts[i % len(hosts)]}/item/{product}?src=cps&scene=live"
        if i % 7 == 3:
            target += "#sku-panel"
        target = normalize_target(target)
        subs: tuple[str, ...] = ()
        if i % 3 == 0:
            subs = (rng.choice(CAMPAIGNS),) if i % 2 else (rng.choice(CAMPAIGNS), "", "ab-b")
        channel = f"{CHANNELS[i % len(CHANNELS)]}-{rng.randrange(1, 40)}"
        expires_at = now - rng.randrange(60, 30 * 86400) if expired else \
            now + rng.randrange(86400, 30 * 86400)
        try:
            url = mint_link(base, ring=ring, promoter_id=promoter, channel_id=channel,
                            target=target, expires_at=expires_at,
                            position_id=POSITIONS[i % len(POSITIONS)],
                            shop_id=f"shop-{i % 97}", product_id=product, sub_ids=subs,
                            allow=allow)
        except (LinkError, TargetError) as err:
            raise LoadConfigError(f"cannot mint a link to {target}: {err}") from None
        return PromoLink(path=url[len("http://edge"):], promoter_id=promoter, target=target)

    live = [make(i, False) for i in range(n_links)]
    expired = [make(n_links + i, True) for i in range(n_expired)]
    rng.shuffle(live)  # the hot links belong to no particular promoter
    cum = list(itertools.accumulate(1.0 / (rank + 1) ** skew for rank in range(n_links)))
    flt = RequesterFilter(os.environ.get("CPS_BOT_USER_AGENTS", "").split(","))
    return Catalog(
        live=tuple(live), live_weights=tuple(cum), expired=tuple(expired),
        promoters=promoters, allow=allow,
        buyer_agents=_read_agents("CPS_LOAD_USER_AGENTS", "user_agents.txt", bots=False,
                                  flt=flt),
        bot_agents=_read_agents("CPS_LOAD_BOT_USER_AGENTS", "bot_user_agents.txt", bots=True,
                                flt=flt))


@events.init.add_listener  # type: ignore[untyped-decorator]
def _on_init(environment: Environment, **_: Any) -> None:
    c = catalog()  # a bad setting stops locust here, before any user starts
    log.info("minted %d live and %d expired links for %d promoters; shape %s, mix %s",
             len(c.live), len(c.expired), len(c.promoters), SHAPE,
             {k: v for k, v in SHARES.items() if v})


# -- buyers ------------------------------------------------------------------

_BUYER_SEQ = itertools.count(random.randrange(1 << 24))
_PROCESS_TAG = random.randrange(1, 1 << 16)


def new_address() -> str:
    """A client address no other buyer of this run has: IPv4 mostly, mobile IPv6 sometimes."""
    n = next(_BUYER_SEQ)
    if n % 10 < 3:
        return (f"240e:{_PROCESS_TAG:x}:{(n >> 32) & 0xffff:x}:{(n >> 16) & 0xffff:x}"
                f"::{n & 0xffff:x}")
    n &= 0xFFFFFF
    return f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}"


def browser_headers(ua: str, address: str) -> dict[str, str]:
    headers = {"User-Agent": ua, "X-Forwarded-For": address,
               "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
               "Accept-Language": "zh-CN,zh;q=0.9,en;q=0.6"}
    if "Chrome/" in ua and random.random() < 0.7:
        headers["Sec-Fetch-Dest"] = "document"
        headers["Sec-Fetch-Mode"] = "navigate"
    return headers


@dataclass(slots=True)
class Click:
    """A first click this user made, for the buyer to repeat."""

    at: float
    link: PromoLink
    address: str
    user_agent: str
    click_id: str
    cookie: str


def _header(resp: ResponseContextManager, name: str) -> str | None:
    """The header's value (repeated ones joined with ", "), None when absent."""
    values = [] if resp.headers is None else resp.headers.getlist(name)
    return ", ".join(values) if values else None


def _settle(resp: ResponseContextManager, failure: str | None) -> None:
    """Record the answer as failed (``failure`` says why) or as a success."""
    if failure:
        resp.failure(failure)  # type: ignore[no-untyped-call]
    else:
        resp.success()  # type: ignore[no-untyped-call]


def _cookie_value(set_cookie: str) -> str:
    return set_cookie.split(";", 1)[0].partition("=")[2]


def _common_failure(resp: ResponseContextManager, kind: str) -> str | None:
    """What any kind refuses: transport errors, 429, 5xx, a wrong verdict header."""
    status = resp.status_code
    if not status:  # (4xx/5xx answers carry an ``error`` too: only status 0 is no answer)
        error = getattr(resp, "error", None)
        return f"no HTTP answer: {type(error).__name__ if error else 'connection failed'}"
    if status == 429:
        return RATE_LIMITED
    if status >= 500:
        return f"HTTP {status} server error"
    verdict = _header(resp, "x-cps-verdict")
    if verdict is not None and verdict != VERDICTS[kind]:
        return f"verdict {verdict}, expected {VERDICTS[kind]} (HTTP {status})"
    return None


def _check_click(resp: ResponseContextManager, link: PromoLink, allow: AllowList,
                 kind: str) -> str | None:
    """A cookie-setting 302 carrying a click id: ``valid`` and ``duplicate``."""
    if resp.status_code != 302:
        return f"HTTP {resp.status_code}, expected 302"
    cookies = [] if resp.headers is None else resp.headers.getlist("set-cookie")
    if len(cookies) != 1 or not cookies[0].startswith(COOKIE_NAME + "="):
        return f"{kind} click without exactly one {COOKIE_NAME} cookie"
    location = _header(resp, "location") or ""
    if not _CLICK_ID.search(location):
        return "Location without cps_click_id"
    if f"&cps_promoter={quote(link.promoter_id, safe='')}" not in location:
        return "Location names another promoter"
    if not location.startswith(link.target.partition("#")[0]):
        return "Location is not the link's target"
    split = urlsplit(location)
    try:  # (the whole Location would not pass: targets may not carry cps_click_id)
        allow.check(f"{split.scheme}://{split.netloc}/")
    except TargetError:
        return "Location is not on the allow-list"
    return None


def _check_plain(resp: ResponseContextManager, link: PromoLink) -> str | None:
    """A 302 to the link's own target with no cookie: ``expired``, ``bot``, ``head``."""
    if resp.status_code != 302:
        return f"HTTP {resp.status_code}, expected 302"
    if _header(resp, "set-cookie") is not None:
        return "a cookie for a click that must not get one"
    if _header(resp, "location") != link.target:
        return "Location is not the link's plain target"
    return None


def _tamper(link: PromoLink, promoters: tuple[str, ...]) -> str:
    """The link with one parameter changed, still well-formed: only the signature fails."""
    path = link.path
    how = random.randrange(4)
    if how == 0:  # commission hijack: another promoter's id on someone else's link
        other = random.choice([p for p in promoters[:8] if p != link.promoter_id] or ["kol-x"])
        return re.sub(r"\?p=[^&]+&", f"?p={other}&", path, count=1)
    if how == 1:  # reviving an old link
        return re.sub(r"&exp=(\d+)&", lambda m: f"&exp={int(m.group(1)) + 30 * 86400}&", path,
                      count=1)
    if how == 2:  # open redirect attempt
        evil = quote("https://evil.example.net/login", safe="-._~")
        return re.sub(r"&t=[^&]+&", f"&t={evil}&", path, count=1)
    last = path[-1]  # a forged signature
    return path[:-1] + ("0" if last != "0" else "1")


class Buyers(FastHttpUser):
    """A stream of buyers arriving on promotion links."""

    wait_time = between(WAIT_MIN_S, WAIT_MAX_S)
    network_timeout = TIMEOUT_S
    connection_timeout = TIMEOUT_S

    def on_start(self) -> None:
        self.catalog = catalog()
        self.recent: deque[Click] = deque(maxlen=8)
        # Each request is another buyer: nothing may carry over between them.
        self.client.client.cookiejar = None

    # -- the kinds -----------------------------------------------------------

    @task(SHARES["valid"])
    def valid(self) -> None:
        c = self.catalog
        link = c.pick_live()
        ua, address = random.choice(c.buyer_agents), new_address()
        with self.client.get(link.path, name="valid", headers=browser_headers(ua, address),
                             allow_redirects=False, catch_response=True) as resp:
            failure = _common_failure(resp, "valid") or _check_click(resp, link, c.allow,
                                                                     "valid")
            _settle(resp, failure)
            m = _CLICK_ID.search(_header(resp, "location") or "")
            if not failure and m is not None:
                self.recent.append(Click(time.monotonic(), link, address, ua, m.group(1),
                                         _cookie_value(_header(resp, "set-cookie") or "")))

    @task(SHARES["duplicate"])
    def duplicate(self) -> None:
        now = time.monotonic()
        while self.recent and now - self.recent[0].at > REPEAT_MAX_AGE_S:
            self.recent.popleft()
        if not self.recent:
            self.valid()  # nobody to repeat yet: a first click it is
            return
        first = random.choice(self.recent)
        address = first.address
        headers = browser_headers(first.user_agent, address)
        if random.random() < 0.5:  # the reload carries the cookie it got
            headers["Cookie"] = f"{COOKIE_NAME}={first.cookie}"
            if random.random() < 0.5:  # ...from the phone's other network
                headers["X-Forwarded-For"] = new_address()
        with self.client.get(first.link.path, name="duplicate", headers=headers,
                             allow_redirects=False, catch_response=True) as resp:
            failure = _common_failure(resp, "duplicate") or _check_click(
                resp, first.link, self.catalog.allow, "duplicate")
            if _header(resp, "x-cps-verdict") == "valid":
                failure = "a repeat within the duplicate window counted as a new valid click"
            if not failure:
                m = _CLICK_ID.search(_header(resp, "location") or "")
                if m is None or m.group(1) != first.click_id:
                    failure = "repeat answered with a new click id, not the first click's"
            _settle(resp, failure)

    @task(SHARES["expired"])
    def expired(self) -> None:
        c = self.catalog
        link = random.choice(c.expired)
        headers = browser_headers(random.choice(c.buyer_agents), new_address())
        with self.client.get(link.path, name="expired", headers=headers,
                             allow_redirects=False, catch_response=True) as resp:
            _settle(resp, _common_failure(resp, "expired") or _check_plain(resp, link))

    @task(SHARES["tampered"])
    def tampered(self) -> None:
        c = self.catalog
        link = c.pick_live()
        headers = browser_headers(random.choice(c.buyer_agents), new_address())
        with self.client.get(_tamper(link, c.promoters), name="tampered", headers=headers,
                             allow_redirects=False, catch_response=True) as resp:
            failure = _common_failure(resp, "tampered")
            if not failure and resp.status_code != 403:
                failure = f"HTTP {resp.status_code}, expected 403"
            if not failure and _header(resp, "set-cookie") is not None:
                failure = "a cookie for a tampered link"
            _settle(resp, failure)

    @task(SHARES["bot"])
    def bot(self) -> None:
        c = self.catalog
        link = c.pick_live()
        address = new_address()
        roll = random.random()
        if roll < 0.7:  # crawlers and chat apps drawing a preview card
            headers = {"User-Agent": random.choice(c.bot_agents), "X-Forwarded-For": address,
                       "Accept": "*/*"}
        elif roll < 0.85:  # the browser prefetching a link it shows
            headers = browser_headers(random.choice(c.buyer_agents), address)
            headers["Sec-Purpose"] = "prefetch"
        else:  # cookie stuffing: a page embeds the link as an image
            headers = browser_headers(random.choice(c.buyer_agents), address)
            headers.update({"Sec-Fetch-Dest": "image", "Sec-Fetch-Mode": "no-cors",
                            "Accept": "image/avif,image/webp,*/*"})
        with self.client.get(link.path, name="bot", headers=headers,
                             allow_redirects=False, catch_response=True) as resp:
            _settle(resp, _common_failure(resp, "bot") or _check_plain(resp, link))

    @task(SHARES["head"])
    def head(self) -> None:
        c = self.catalog
        link = c.pick_live()
        headers = browser_headers(random.choice(c.buyer_agents), new_address())
        with self.client.head(link.path, name="head", headers=headers,
                              allow_redirects=False, catch_response=True) as resp:
            _settle(resp, _common_failure(resp, "head") or _check_plain(resp, link))


# -- shapes: exactly one is active (locust uses the non-abstract one) --------

class LiveStreamSpike(LoadTestShape):
    """Idle trickle, a burst within seconds when the host pins the product, hold, decay, idle."""

    abstract = SHAPE != "spike"

    def tick(self) -> tuple[int, float] | None:
        t = time.perf_counter() - self.start_time  # get_run_time(), which is untyped
        burst_at, hold_until, decay_until = 0.15 * DURATION_S, 0.60 * DURATION_S, \
            0.85 * DURATION_S
        if t >= DURATION_S:
            return None
        if t < burst_at or t >= decay_until:
            return IDLE_USERS, float(max(IDLE_USERS, PEAK_USERS))
        if t < hold_until:
            return PEAK_USERS, max(1.0, (PEAK_USERS - IDLE_USERS) / RAMP_S)
        left = (decay_until - t) / (decay_until - hold_until)
        users = IDLE_USERS + round((PEAK_USERS - IDLE_USERS) * left)
        return users, float(PEAK_USERS)


class Steady(LoadTestShape):
    """A constant number of users."""

    abstract = SHAPE != "steady"

    def tick(self) -> tuple[int, float] | None:
        if time.perf_counter() - self.start_time >= DURATION_S:
            return None
        return PEAK_USERS, max(1.0, PEAK_USERS / RAMP_S)


# -- pass / fail -------------------------------------------------------------

def verdict_on(stats: RequestStats) -> list[str]:
    """Why this run fails (empty: it passes)."""
    reasons = []
    total = stats.total
    if total.num_requests == 0:
        return ["no request was made"]
    if total.fail_ratio > MAX_FAILURE_RATIO:
        reasons.append(f"failure ratio {total.fail_ratio:.4f} > CPS_LOAD_MAX_FAILURE_RATIO "
                       f"{MAX_FAILURE_RATIO:g} ({total.num_failures} of {total.num_requests})")
    limited = sum(e.occurrences for e in stats.errors.values() if RATE_LIMITED in str(e.error))
    if limited:
        reasons.append(f"{limited} answers were 429 rate limited: the load test set-up is "
                       "wrong, not the edge (CPS_FORWARDED_HOPS=1 on the edge?)")
    server = sum(e.occurrences for e in stats.errors.values()
                 if _SERVER_ERROR.search(str(e.error)))
    if server:
        reasons.append(f"{server} answers were 5xx server errors")
    valid = stats.entries.get(("valid", "GET"))
    if valid is None or valid.num_requests == 0:
        if SHARES["valid"]:
            reasons.append("no valid click was measured")
    else:
        p99 = valid.get_response_time_percentile(0.99)
        if p99 > MAX_P99_MS:
            reasons.append(f"p99 response time of valid clicks {p99} ms > "
                           f"CPS_LOAD_MAX_P99_MS {MAX_P99_MS:g} ms")
    return reasons


@events.quitting.add_listener  # type: ignore[untyped-decorator]
def _assert_thresholds(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return  # the master judges the whole run
    reasons = verdict_on(environment.stats)
    runner = environment.runner
    if runner is not None and runner.exceptions:
        reasons.append(f"{len(runner.exceptions)} distinct exceptions in the locustfile")
    for reason in reasons:
        log.error("load test FAILED: %s", reason)
    total = environment.stats.total
    if not reasons:
        log.info("load test passed: %d requests, failure ratio %.4f", total.num_requests,
                 total.fail_ratio)
    # Set either way: locust would otherwise exit 1 on the first failed request,
    # whatever CPS_LOAD_MAX_FAILURE_RATIO allows.
    environment.process_exit_code = 1 if reasons else 0
