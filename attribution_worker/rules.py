"""Last-click attribution as pure functions (SPEC sections 2, 5 and 7).

No I/O, no clock, no database: frozen facts in, one ``Outcome`` out, every
refusal a reason.  The worker gathers the facts (order message, shop, the
click store's two candidates, the unsealed token and the click it names, the
promoters concerned) and calls ``decide``; ``cps-attribution explain`` prints
``Outcome.explanation.render()``.  ``RULES.md`` next to this file lists every
rule, reason code and choice for the README.

For an order created at T (ms) by buyer B in shop S:

1. **CPS**, if S has the CPS attribute at T: some commission-promotion period
   has ``joined_at_ms <= T`` and either no exit, an exit after T, or an exit
   *less than* ``cps_grace_ms`` (15 days) before T (exited 14 d 23:59:59.999
   before: CPS; exactly 15 days: not).  Candidates, each re-checked here
   because the rules do not trust the store:

   * the store's latest click by B on S and its latest site-wide click by B;
   * the order's sealed ``attribution_token``, scoped through the stored click
     it names (SPEC 5: a token is evidence only for the shops its click could
     be attributed to).

   A click counts when ``T - window <= ts <= T`` (both edges inclusive, to the
   ms; window 15 days), its link is for S, or is site-wide while cross-shop
   attribution is on platform-wide and S did not opt out, and it is not a
   refused self-purchase.  The latest counting click wins.
2. **Self-operated** (only after the final attempt found no CPS click):
   ``fanstype`` present and S had authorised the order's channel at T.
3. Otherwise **none**.

Choices where the SPEC is silent (each tested in
``tests/unit/attribution_worker/test_rules.py``):

* Scope comes from the click's own ``shop_id``, never from which slot the
  store returned it in: a "site-wide" slot holding a click for S is a click
  on S, a "shop" slot holding a click for another shop is foreign.
* A store click must carry the order's ``buyer_key``; an order without one
  matches no store click (the token can still be evidence).
* Token: a seal that does not open (forged, edited, unknown key, unreadable)
  is rejected; its click time obeys the same window and its sealed
  ``window_end_ms`` must be ``>= T``, else ``token_expired``; the stored click
  it names must agree with it (click id, promoter, channel, time), else
  ``token_mismatch``.  A token whose ``visitor_id`` differs from the order's
  ``buyer_key`` is still evidence: the buyer changed device or lost the
  cookie jar between click and order, and the seal already proves the click
  reached this buyer's browser.  A token whose click is not in the store
  cannot be scoped: it holds the decision (RETRY) while it could still win,
  and is rejected (``token_click_unknown``) on the final attempt.
* Ties at the same millisecond: a link for S beats a site-wide link, then the
  click store's record beats the token, then the greater click id; the same
  click id from the store and the token is one click, recorded as
  ``evidence=click``.  So the decision never depends on candidate order.
* Self-purchase: the platform default is *allowed* (the seeds' "self-purchase
  saving": the promoter buying through their own link saves the commission);
  a promoter's ``allow``/``deny`` overrides it both ways.  It is detected only
  when both the order's ``buyer_account`` and the promoter's ``account_id``
  are known (a promoter missing from ``promoters`` is not checked, and the
  explanation says so).  A refused self-purchase click is simply not
  evidence: the next latest valid click, by another promoter, may still win.
* RETRY only while waiting can change the outcome: not the final attempt, S
  has the CPS attribute, and either no click counts yet while the order has a
  ``buyer_key`` (a click may still arrive), or the token names a click not yet
  in the store that is not earlier than the best click found.  A shop without
  the CPS attribute, or an order with neither ``buyer_key`` nor token, is
  decided on the first attempt.
* Channel authorisation periods are evaluated at T: ``authorised_at_ms <= T
  < revoked_at_ms`` (revoked exactly at T: not authorised).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from contracts.attribution import MAX_REASON_LEN, AttributionDecision, AttributionType, Evidence
from contracts.clicks import ClickEvent, Verdict
from contracts.cookie import MAX_SEALED_LEN, Attribution, CookieSealer
from contracts.keys import KID_PATTERN
from contracts.orders import ID_PATTERN, MAX_OPAQUE_LEN, OrderMessage

SECOND_MS = 1000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
DEFAULT_WINDOW_MS = 15 * DAY_MS  # SPEC 5/7: the attribution window, = the cookie's Max-Age
DEFAULT_CPS_GRACE_MS = 15 * DAY_MS  # SPEC 2: CPS attribute kept < 15 days after exit
DEFAULT_SELF_PURCHASE_ALLOWED = True  # "self-purchase saving" (seeds); see module docstring
_CLICK_ID = re.compile(r"[0-9a-f]{28}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class RulesInputError(ValueError):
    """Facts that cannot be decided on (a caller's bug); the message names the field."""


class SelfPurchase(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class Source(StrEnum):
    """The four candidates every explanation lists, in this order."""

    SHOP_CLICK = "shop_click"
    SITEWIDE_CLICK = "sitewide_click"
    TOKEN = "token"  # noqa: S105 - a candidate's name, not a secret
    FANSTYPE = "fanstype"


SOURCE_LABELS = {Source.SHOP_CLICK: "store click on shop",
                 Source.SITEWIDE_CLICK: "store site-wide click",
                 Source.TOKEN: "attribution token", Source.FANSTYPE: "fanstype/channel"}


class Code(StrEnum):
    """Why a candidate was accepted or rejected (stable: support tooling greps these)."""

    LAST_CLICK = "last_click"  # accepted: the winning click
    EARLIER_CLICK = "earlier_click"  # accepted, but a later (or tie-winning) click won
    BEST_SO_FAR = "best_so_far"  # accepted, the best click yet, but the decision waits (RETRY)
    SAME_CLICK = "same_click"  # accepted: names the winning click itself
    SELF_OPERATED = "self_operated"  # accepted: fanstype + authorised channel
    ABSENT = "absent"  # no such candidate
    NOT_CPS_SHOP = "not_cps_shop"
    NO_BUYER_KEY = "no_buyer_key"
    OTHER_BUYER = "other_buyer"
    AFTER_ORDER = "after_order"
    OUTSIDE_WINDOW = "outside_window"
    FOREIGN_SHOP = "foreign_shop"
    CROSS_SHOP_DISABLED = "cross_shop_disabled"
    SHOP_OPTED_OUT = "shop_opted_out"
    SELF_PURCHASE = "self_purchase"
    TOKEN_UNREADABLE = "token_unreadable"  # noqa: S105
    TOKEN_EXPIRED = "token_expired"  # noqa: S105
    TOKEN_MISMATCH = "token_mismatch"  # noqa: S105
    TOKEN_CLICK_PENDING = "token_click_pending"  # noqa: S105 - not in the store yet: retry
    TOKEN_CLICK_UNKNOWN = "token_click_unknown"  # noqa: S105 - not in the store, final attempt
    CPS_PRIORITY = "cps_priority"  # fanstype not used: a CPS click won
    DEFERRED = "deferred"  # fanstype not decided yet: waiting for a click
    NO_FANSTYPE = "no_fanstype"
    NO_ORDER_CHANNEL = "no_order_channel"
    CHANNEL_NOT_AUTHORISED = "channel_not_authorised"


class Rule(StrEnum):
    """The rule that decided."""

    CPS_LAST_CLICK = "cps_last_click"
    SELF_OPERATED = "self_operated_fanstype"
    NOT_ATTRIBUTED = "not_attributed"
    RETRY = "retry_delayed_attribution"


# ---------------------------------------------------------------- input validation


def _fail(owner: str, name: str, problem: str) -> RulesInputError:
    return RulesInputError(f"{owner}.{name}: {problem}")


def _check_id(owner: str, name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise _fail(owner, name, f"must be an id matching {ID_PATTERN.pattern}"
                    + (" or None" if optional else ""))


def _check_opaque(owner: str, name: str, value: object, *, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value or len(value) > MAX_OPAQUE_LEN:
        raise _fail(owner, name, f"must be a non-empty string of at most {MAX_OPAQUE_LEN} "
                    "characters" + (" or None" if optional else ""))


def _check_ms(owner: str, name: str, value: object, *, optional: bool = False,
              low: int = 0) -> None:
    if value is None and optional:
        return
    if type(value) is not int or value < low:
        raise _fail(owner, name, f"must be an integer number of ms >= {low}"
                    + (" or None" if optional else ""))


def _check_bool(owner: str, name: str, value: object) -> None:
    if type(value) is not bool:
        raise _fail(owner, name, "must be True or False")


# ---------------------------------------------------------------- facts


@dataclass(frozen=True, slots=True)
class OrderFacts:
    order_id: str
    shop_id: str
    buyer_key: str | None  # the cookie's visitor id
    buyer_account: str | None  # the trade system's account id (self-purchase)
    created_at_ms: int  # T
    channel_id: str | None = None  # the order environment's channel
    fanstype: str | None = None
    attribution_token: str | None = None  # the sealed cookie value

    def __post_init__(self) -> None:
        _check_id("order", "order_id", self.order_id)
        _check_id("order", "shop_id", self.shop_id)
        _check_opaque("order", "buyer_key", self.buyer_key)
        _check_opaque("order", "buyer_account", self.buyer_account)
        _check_ms("order", "created_at_ms", self.created_at_ms)
        _check_id("order", "channel_id", self.channel_id, optional=True)
        _check_opaque("order", "fanstype", self.fanstype)
        _check_opaque("order", "attribution_token", self.attribution_token)

    @classmethod
    def from_message(cls, message: OrderMessage) -> OrderFacts:
        return cls(order_id=message.order_id, shop_id=message.shop_id,
                   buyer_key=message.buyer_key, buyer_account=message.buyer_account,
                   created_at_ms=message.created_at, channel_id=message.channel_id,
                   fanstype=message.fanstype, attribution_token=message.attribution_token)


@dataclass(frozen=True, slots=True)
class ClickFacts:
    """A valid click as the click store holds it; ``shop_id`` None = a site-wide link."""

    click_id: str
    ts_ms: int
    buyer_key: str
    promoter_id: str
    channel_id: str
    position_id: str | None = None
    shop_id: str | None = None
    product_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.click_id, str) or not _CLICK_ID.fullmatch(self.click_id):
            raise _fail("click", "click_id", "must be 28 lowercase hex digits")
        _check_ms("click", "ts_ms", self.ts_ms)
        _check_opaque("click", "buyer_key", self.buyer_key, optional=False)
        _check_id("click", "promoter_id", self.promoter_id)
        _check_id("click", "channel_id", self.channel_id)
        for name in ("position_id", "shop_id", "product_id"):
            _check_id("click", name, getattr(self, name), optional=True)

    @classmethod
    def from_event(cls, event: ClickEvent) -> ClickFacts:
        """A billable click event as facts; anything else raises ``RulesInputError``."""
        if event.verdict is not Verdict.VALID:
            raise _fail("click", "verdict", f"only valid clicks are evidence, not {event.verdict}")
        return cls(click_id=event.click_id, ts_ms=event.ts, buyer_key=event.buyer_key,
                   promoter_id=event.promoter_id or "", channel_id=event.channel_id or "",
                   position_id=event.position_id, shop_id=event.shop_id,
                   product_id=event.product_id)


@dataclass(frozen=True, slots=True)
class CpsPeriod:
    """One membership of commission promotion: [joined_at_ms, exited_at_ms)."""

    joined_at_ms: int
    exited_at_ms: int | None = None

    def __post_init__(self) -> None:
        _check_ms("cps_period", "joined_at_ms", self.joined_at_ms)
        _check_ms("cps_period", "exited_at_ms", self.exited_at_ms, optional=True,
                  low=self.joined_at_ms if type(self.joined_at_ms) is int else 0)


@dataclass(frozen=True, slots=True)
class ChannelAuthorisation:
    """The shop authorised the channel's app over [authorised_at_ms, revoked_at_ms)."""

    channel_id: str
    authorised_at_ms: int
    revoked_at_ms: int | None = None

    def __post_init__(self) -> None:
        _check_id("channel_authorisation", "channel_id", self.channel_id)
        _check_ms("channel_authorisation", "authorised_at_ms", self.authorised_at_ms)
        _check_ms("channel_authorisation", "revoked_at_ms", self.revoked_at_ms, optional=True,
                  low=self.authorised_at_ms if type(self.authorised_at_ms) is int else 0)


@dataclass(frozen=True, slots=True)
class ShopFacts:
    shop_id: str
    cps_periods: tuple[CpsPeriod, ...] = ()
    cross_shop_opt_out: bool = False
    channel_authorisations: tuple[ChannelAuthorisation, ...] = ()

    def __post_init__(self) -> None:
        _check_id("shop", "shop_id", self.shop_id)
        if not isinstance(self.cps_periods, tuple) or not all(
                isinstance(p, CpsPeriod) for p in self.cps_periods):
            raise _fail("shop", "cps_periods", "must be a tuple of CpsPeriod")
        _check_bool("shop", "cross_shop_opt_out", self.cross_shop_opt_out)
        if not isinstance(self.channel_authorisations, tuple) or not all(
                isinstance(a, ChannelAuthorisation) for a in self.channel_authorisations):
            raise _fail("shop", "channel_authorisations", "must be a tuple of ChannelAuthorisation")


@dataclass(frozen=True, slots=True)
class PromoterFacts:
    promoter_id: str
    account_id: str | None = None  # the promoter's own buyer account, if known
    self_purchase: SelfPurchase | None = None  # None = the platform default

    def __post_init__(self) -> None:
        _check_id("promoter", "promoter_id", self.promoter_id)
        _check_opaque("promoter", "account_id", self.account_id)
        if self.self_purchase is not None and not isinstance(self.self_purchase, SelfPurchase):
            raise _fail("promoter", "self_purchase", "must be SelfPurchase.ALLOW, .DENY or None")


@dataclass(frozen=True, slots=True)
class Policy:
    """Platform settings the rules read."""

    attribution_window_ms: int = DEFAULT_WINDOW_MS
    cps_grace_ms: int = DEFAULT_CPS_GRACE_MS
    cross_shop_attribution: bool = True  # SPEC 3: on by default
    self_purchase_allowed: bool = DEFAULT_SELF_PURCHASE_ALLOWED

    def __post_init__(self) -> None:
        _check_ms("policy", "attribution_window_ms", self.attribution_window_ms, low=1)
        _check_ms("policy", "cps_grace_ms", self.cps_grace_ms)
        _check_bool("policy", "cross_shop_attribution", self.cross_shop_attribution)
        _check_bool("policy", "self_purchase_allowed", self.self_purchase_allowed)

    def describe(self) -> str:
        return (f"window {_span(self.attribution_window_ms)}, CPS grace after exit "
                f"{_span(self.cps_grace_ms)}, cross-shop attribution "
                f"{'on' if self.cross_shop_attribution else 'off'}, self-purchase "
                f"{'allowed' if self.self_purchase_allowed else 'refused'} by default")


@dataclass(frozen=True, slots=True)
class TokenFacts:
    """The order's ``attribution_token``: unsealed (plus the stored click it names) or refused."""

    attribution: Attribution | None = None
    click: ClickFacts | None = None  # the click store's record of attribution.click_id
    problem: str | None = None  # why it could not be read (then attribution is None)

    def __post_init__(self) -> None:
        if (self.attribution is None) == (self.problem is None):
            raise _fail("token", "problem", "exactly one of attribution and problem is set")
        if self.click is not None and self.attribution is None:
            raise _fail("token", "click", "an unreadable token names no click")

    def with_click(self, click: ClickFacts | None) -> TokenFacts:
        return replace(self, click=click)


def read_token(sealer: CookieSealer, token: str, *,
               stored_click: ClickFacts | None = None) -> TokenFacts:
    """Unseal an order's ``attribution_token``; never raises on any text."""
    if not isinstance(token, str) or not token:
        return TokenFacts(problem="the attribution_token is empty")
    if len(token) > MAX_SEALED_LEN:
        return TokenFacts(problem=f"the attribution_token is {len(token)} characters, longer "
                                  f"than any sealed cookie ({MAX_SEALED_LEN}): unreadable")
    kid, dot, _ = token.partition(".")
    if not dot or not KID_PATTERN.fullmatch(kid):
        return TokenFacts(problem="the attribution_token is not of the form KID.BODY: unreadable")
    found = sealer.unseal(token)
    if found is None:
        return TokenFacts(problem=f"the attribution_token (key id {kid!r}) does not unseal: "
                                  "forged, edited, or sealed under a key no longer in the "
                                  "cookie key ring")
    return TokenFacts(attribution=found, click=stored_click)


# ---------------------------------------------------------------- explanation and outcome


@dataclass(frozen=True, slots=True)
class CandidateNote:
    source: Source
    click_id: str | None
    accepted: bool
    code: Code
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"source": str(self.source), "label": SOURCE_LABELS[self.source],
                "click_id": self.click_id, "accepted": self.accepted,
                "code": str(self.code), "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Explanation:
    """Everything considered for one order, and what decided (``cps-attribution explain``)."""

    order_id: str
    shop_id: str
    order_created_at_ms: int
    buyer_key: str | None
    buyer_account: str | None
    final_attempt: bool
    policy: str
    shop_cps: bool
    shop_detail: str
    candidates: tuple[CandidateNote, ...]
    rule: Rule
    outcome: str  # "cps", "self_operated", "none" or "retry"
    reason: str

    def render(self) -> str:
        attempt = "final attempt" if self.final_attempt else "not the final attempt"
        lines = [
            f"order {self.order_id} in shop {self.shop_id}, created "
            f"{format_ts_ms(self.order_created_at_ms)} ({attempt})",
            f"buyer_key {_show(self.buyer_key)}, buyer_account {_show(self.buyer_account)}",
            f"outcome: {self.outcome} (rule {self.rule})",
            f"reason: {self.reason}",
            f"shop: {self.shop_detail}",
            f"policy: {self.policy}",
            "candidates:",
        ]
        for note in self.candidates:
            verdict = "accepted" if note.accepted else "rejected"
            lines.append(f"  {verdict:<8} {SOURCE_LABELS[note.source]} [{note.code}]: "
                         f"{note.detail}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"order_id": self.order_id, "shop_id": self.shop_id,
                "order_created_at": self.order_created_at_ms,
                "order_created_at_utc": format_ts_ms(self.order_created_at_ms),
                "buyer_key": self.buyer_key, "buyer_account": self.buyer_account,
                "final_attempt": self.final_attempt, "policy": self.policy,
                "shop_cps": self.shop_cps, "shop_detail": self.shop_detail,
                "candidates": [note.to_dict() for note in self.candidates],
                "rule": str(self.rule), "outcome": self.outcome, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Outcome:
    """A decision, or RETRY (``attribution_type`` None), with its explanation."""

    attribution_type: AttributionType | None
    evidence: Evidence
    reason: str
    explanation: Explanation
    promoter_id: str | None = None
    channel_id: str | None = None
    position_id: str | None = None
    click_id: str | None = None

    @property
    def retry(self) -> bool:
        return self.attribution_type is None

    def to_decision(self, *, decided_at_ms: int, attempts: int) -> AttributionDecision:
        """The record for ``ATTRIBUTIONS_TOPIC``; a RETRY has none (``RulesInputError``)."""
        if self.attribution_type is None:
            raise RulesInputError("outcome: a RETRY is not a decision")
        reason = self.reason if len(self.reason) <= MAX_REASON_LEN else \
            self.reason[:MAX_REASON_LEN - 3] + "..."
        return AttributionDecision(
            order_id=self.explanation.order_id, attribution_type=self.attribution_type,
            promoter_id=self.promoter_id, channel_id=self.channel_id, click_id=self.click_id,
            evidence=self.evidence, reason=reason,
            order_created_at=self.explanation.order_created_at_ms, decided_at=decided_at_ms,
            position_id=self.position_id, attempts=attempts)


# ---------------------------------------------------------------- formatting


def format_ts_ms(ts_ms: int) -> str:
    """``2026-03-01T12:00:00.000Z``: UTC to the millisecond, computed without floats."""
    try:
        moment = _EPOCH + timedelta(milliseconds=ts_ms)
    except OverflowError:
        return f"{ts_ms} ms since the epoch"
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % SECOND_MS:03d}Z"


def format_duration_ms(duration_ms: int) -> str:
    """``15 days 0 h 0 min 0.001 s``: exact, every unit shown, so edges are visible."""
    sign = "-" if duration_ms < 0 else ""
    days, rest = divmod(abs(duration_ms), DAY_MS)
    hours, rest = divmod(rest, HOUR_MS)
    minutes, rest = divmod(rest, MINUTE_MS)
    seconds, millis = divmod(rest, SECOND_MS)
    unit = "day" if days == 1 else "days"
    return f"{sign}{days} {unit} {hours} h {minutes} min {seconds}.{millis:03d} s"


def _span(duration_ms: int) -> str:
    if duration_ms % DAY_MS == 0:
        days = duration_ms // DAY_MS
        return f"{days} day" if days == 1 else f"{days} days"
    return format_duration_ms(duration_ms)


def _span_adjective(duration_ms: int) -> str:
    """``15-day`` (as in "the 15-day window"), or the exact duration."""
    if duration_ms % DAY_MS == 0:
        return f"{duration_ms // DAY_MS}-day"
    return format_duration_ms(duration_ms)


def _show(value: str | None) -> str:
    return "(none)" if value is None else repr(value)


def _click_ref(click: ClickFacts) -> str:
    return f"click {click.click_id} at {format_ts_ms(click.ts_ms)}"


def _describe_click(click: ClickFacts) -> str:
    scope = f"link for shop {click.shop_id}" if click.shop_id is not None else "site-wide link"
    return (f"{_click_ref(click)} (promoter {click.promoter_id}, channel {click.channel_id}, "
            f"{scope})")


# ---------------------------------------------------------------- shop facts at T


def cps_attribute(shop: ShopFacts, at_ms: int, policy: Policy) -> tuple[bool, str]:
    """Whether ``shop`` has the CPS attribute at ``at_ms``, and why (SPEC 2)."""
    grace = policy.cps_grace_ms
    started = sorted((p for p in shop.cps_periods if p.joined_at_ms <= at_ms),
                     key=lambda p: p.joined_at_ms, reverse=True)
    head = f"shop {shop.shop_id} has the CPS attribute at the order's time"
    for period in started:
        joined = format_ts_ms(period.joined_at_ms)
        if period.exited_at_ms is None:
            return True, f"{head}: joined commission promotion at {joined}, not exited"
        if period.exited_at_ms > at_ms:
            return True, (f"{head}: joined commission promotion at {joined}, exited at "
                          f"{format_ts_ms(period.exited_at_ms)}, after the order")
        since = at_ms - period.exited_at_ms
        if since < grace:
            return True, (f"{head}: exited commission promotion at "
                          f"{format_ts_ms(period.exited_at_ms)}, {format_duration_ms(since)} "
                          f"before the order: within the {_span_adjective(grace)} grace "
                          "after exit")
    head = f"shop {shop.shop_id} has no CPS attribute at the order's time"
    if not shop.cps_periods:
        return False, f"{head}: never joined commission promotion"
    if not started:
        first = min(p.joined_at_ms for p in shop.cps_periods)
        return False, f"{head}: joined commission promotion only at {format_ts_ms(first)}, " \
                      "after the order"
    last_exit = max(p.exited_at_ms or 0 for p in started)
    return False, (f"{head}: exited commission promotion at {format_ts_ms(last_exit)}, "
                   f"{format_duration_ms(at_ms - last_exit)} before the order: the "
                   f"{_span_adjective(grace)} grace after exit had passed")


def channel_authorised(shop: ShopFacts, channel_id: str, at_ms: int) -> tuple[bool, str]:
    """Whether ``shop`` had authorised ``channel_id``'s app at ``at_ms``, and how."""
    periods = [a for a in shop.channel_authorisations if a.channel_id == channel_id]
    for auth in periods:
        if auth.authorised_at_ms <= at_ms and (auth.revoked_at_ms is None
                                               or at_ms < auth.revoked_at_ms):
            until = "" if auth.revoked_at_ms is None else \
                f", revoked at {format_ts_ms(auth.revoked_at_ms)}, after the order"
            return True, f"authorised at {format_ts_ms(auth.authorised_at_ms)}{until}"
    if not periods:
        return False, "never authorised"
    revoked = [a.revoked_at_ms for a in periods
               if a.revoked_at_ms is not None and a.revoked_at_ms <= at_ms]
    if revoked:
        last = max(revoked)
        return False, (f"authorisation revoked at {format_ts_ms(last)}, "
                       f"{format_duration_ms(at_ms - last)} before the order")
    first = min(a.authorised_at_ms for a in periods)
    return False, f"authorised only at {format_ts_ms(first)}, after the order"


# ---------------------------------------------------------------- candidate checks


@dataclass(frozen=True, slots=True)
class _Context:
    order: OrderFacts
    shop: ShopFacts
    policy: Policy
    promoters: Mapping[str, PromoterFacts]

    @property
    def at_ms(self) -> int:
        return self.order.created_at_ms


@dataclass(frozen=True, slots=True)
class _Candidate:
    source: Source
    click: ClickFacts
    evidence: Evidence
    detail: str

    def rank(self) -> tuple[int, bool, bool, str]:
        """Latest first; ties: shop link over site-wide, store over token, greater id."""
        return (self.click.ts_ms, self.click.shop_id is not None,
                self.evidence is Evidence.CLICK, self.click.click_id)


_Problem = tuple[Code, str]


def _window_problem(ts_ms: int, ctx: _Context, expired: Code) -> _Problem | None:
    window = ctx.policy.attribution_window_ms
    if ts_ms > ctx.at_ms:
        return Code.AFTER_ORDER, (f"is {format_duration_ms(ts_ms - ctx.at_ms)} after the "
                                  "order: only clicks up to the order's creation count")
    if ts_ms < ctx.at_ms - window:
        return expired, (f"is {format_duration_ms(ctx.at_ms - ts_ms)} before the order: "
                         f"outside the {_span_adjective(window)} window")
    return None


def _scope_problem(click_shop_id: str | None, ctx: _Context) -> _Problem | None:
    shop_id = ctx.shop.shop_id
    if click_shop_id == shop_id:
        return None
    if click_shop_id is not None:
        return Code.FOREIGN_SHOP, f"is for shop {click_shop_id}, not the order's shop {shop_id}"
    if not ctx.policy.cross_shop_attribution:
        return Code.CROSS_SHOP_DISABLED, ("is site-wide, and cross-shop attribution is "
                                          "disabled platform-wide")
    if ctx.shop.cross_shop_opt_out:
        return Code.SHOP_OPTED_OUT, (f"is site-wide, and shop {shop_id} opted out of "
                                     "cross-shop attribution")
    return None


def _self_purchase(promoter_id: str, ctx: _Context) -> tuple[_Problem | None, str]:
    """(the refusal, or None) and a remark for an accepted click's detail."""
    promoter = ctx.promoters.get(promoter_id)
    if promoter is None:
        return None, (f". Promoter {promoter_id} is unknown to the registry: self-purchase "
                      "not checked")
    account = ctx.order.buyer_account
    if account is None or promoter.account_id is None or account != promoter.account_id:
        return None, ""
    if promoter.self_purchase is not None:
        allowed, by = promoter.self_purchase is SelfPurchase.ALLOW, "the promoter's setting"
    else:
        allowed, by = ctx.policy.self_purchase_allowed, "the platform default"
    if allowed:
        return None, f". A self-purchase (buyer_account is the promoter's own), allowed by {by}"
    return (Code.SELF_PURCHASE, f"is a self-purchase: buyer_account {account!r} is promoter "
                                f"{promoter_id}'s own account, and {by} refuses self-purchase"), ""


def _accepted_detail(click: ClickFacts, ctx: _Context, remark: str) -> str:
    scope = "for this shop" if click.shop_id is not None else "site-wide, cross-shop allowed"
    return (f"is {format_duration_ms(ctx.at_ms - click.ts_ms)} before the order: inside the "
            f"{_span_adjective(ctx.policy.attribution_window_ms)} window, {scope}{remark}")


def _judge_store_click(ctx: _Context, source: Source, click: ClickFacts | None,
                       cps: bool) -> tuple[CandidateNote, _Candidate | None]:
    if click is None:
        return CandidateNote(source, None, False, Code.ABSENT, "none in the click store"), None
    desc = _describe_click(click)

    def reject(code: Code, why: str) -> tuple[CandidateNote, None]:
        return CandidateNote(source, click.click_id, False, code, f"{desc} {why}"), None

    if not cps:
        return reject(Code.NOT_CPS_SHOP, "not considered: the shop has no CPS attribute")
    if ctx.order.buyer_key is None:
        return reject(Code.NO_BUYER_KEY, "cannot be matched: the order has no buyer_key")
    if click.buyer_key != ctx.order.buyer_key:
        return reject(Code.OTHER_BUYER, f"is by buyer_key {click.buyer_key!r}, not the "
                                        f"order's {ctx.order.buyer_key!r}")
    problem = _window_problem(click.ts_ms, ctx, Code.OUTSIDE_WINDOW) \
        or _scope_problem(click.shop_id, ctx)
    if problem is not None:
        return reject(*problem)
    refusal, remark = _self_purchase(click.promoter_id, ctx)
    if refusal is not None:
        return reject(*refusal)
    detail = f"{desc} {_accepted_detail(click, ctx, remark)}"
    note = CandidateNote(source, click.click_id, True, Code.EARLIER_CLICK, detail)
    return note, _Candidate(source, click, Evidence.CLICK, detail)


def _token_mismatch(sealed: Attribution, click: ClickFacts) -> str | None:
    differ = [name for name, mine, theirs in (
        ("click_id", sealed.click_id, click.click_id),
        ("promoter_id", sealed.promoter_id, click.promoter_id),
        ("channel_id", sealed.channel_id, click.channel_id),
        ("click time", sealed.click_ms, click.ts_ms)) if mine != theirs]
    if not differ:
        return None
    return f"disagrees with the stored click on {', '.join(differ)}: not evidence"


def _describe_token(sealed: Attribution) -> str:
    return (f"token for click {sealed.click_id} at {format_ts_ms(sealed.click_ms)} (promoter "
            f"{sealed.promoter_id}, channel {sealed.channel_id}, visitor {sealed.visitor_id!r})")


def _token_time_problem(sealed: Attribution, ctx: _Context) -> _Problem | None:
    problem = _window_problem(sealed.click_ms, ctx, Code.TOKEN_EXPIRED)
    if problem is None and sealed.window_end_ms < ctx.at_ms:
        problem = Code.TOKEN_EXPIRED, (
            f"expired: its sealed window ended at {format_ts_ms(sealed.window_end_ms)}, "
            f"{format_duration_ms(ctx.at_ms - sealed.window_end_ms)} before the order")
    return problem


@dataclass(frozen=True, slots=True)
class _TokenJudgement:
    note: CandidateNote
    candidate: _Candidate | None = None
    pending: Attribution | None = None  # in time, but its click is not in the store yet


def _judge_token(ctx: _Context, token: TokenFacts | None, store: tuple[ClickFacts | None, ...],
                 cps: bool, final_attempt: bool) -> _TokenJudgement:
    if token is None:
        return _TokenJudgement(CandidateNote(Source.TOKEN, None, False, Code.ABSENT,
                                             "the order carries no attribution_token"))
    sealed = token.attribution
    if sealed is None:
        return _TokenJudgement(CandidateNote(Source.TOKEN, None, False, Code.TOKEN_UNREADABLE,
                                             f"rejected: {token.problem}"))
    desc = _describe_token(sealed)

    def reject(code: Code, why: str, pending: Attribution | None = None) -> _TokenJudgement:
        note = CandidateNote(Source.TOKEN, sealed.click_id, False, code, f"{desc} {why}")
        return _TokenJudgement(note, pending=pending)

    if not cps:
        return reject(Code.NOT_CPS_SHOP, "not considered: the shop has no CPS attribute")
    problem = _token_time_problem(sealed, ctx)
    if problem is not None:
        return reject(*problem)
    click = token.click or next((c for c in store if c is not None
                                 and c.click_id == sealed.click_id), None)
    if click is None:
        if final_attempt:
            return reject(Code.TOKEN_CLICK_UNKNOWN, "names a click not in the click store after "
                                                    "the final attempt: its shop scope cannot "
                                                    "be checked")
        return reject(Code.TOKEN_CLICK_PENDING, "names a click not in the click store yet: its "
                                                "shop scope cannot be checked", pending=sealed)
    mismatch = _token_mismatch(sealed, click)
    if mismatch is not None:
        return reject(Code.TOKEN_MISMATCH, mismatch)
    problem = _scope_problem(click.shop_id, ctx)
    if problem is not None:
        return reject(*problem)
    refusal, remark = _self_purchase(click.promoter_id, ctx)
    if refusal is not None:
        return reject(*refusal)
    if ctx.order.buyer_key != sealed.visitor_id:
        remark += (f". Its visitor id differs from the order's buyer_key "
                   f"{_show(ctx.order.buyer_key)} (another device or cookie jar): the seal "
                   "is evidence in itself")
    detail = f"{desc} {_accepted_detail(click, ctx, remark)}"
    note = CandidateNote(Source.TOKEN, click.click_id, True, Code.EARLIER_CLICK, detail)
    return _TokenJudgement(note, _Candidate(Source.TOKEN, click, Evidence.TOKEN, detail))


def _judge_fanstype(ctx: _Context) -> tuple[bool, Code, str]:
    order, shop = ctx.order, ctx.shop
    if order.fanstype is None:
        return False, Code.NO_FANSTYPE, "the order's environment carries no fanstype"
    if order.channel_id is None:
        return False, Code.NO_ORDER_CHANNEL, (f"fanstype {order.fanstype!r} present, but the "
                                              "order names no channel")
    ok, how = channel_authorised(shop, order.channel_id, ctx.at_ms)
    if not ok:
        return False, Code.CHANNEL_NOT_AUTHORISED, (
            f"fanstype {order.fanstype!r} present, but shop {shop.shop_id} had not authorised "
            f"channel {order.channel_id} at the order's time ({how})")
    return True, Code.SELF_OPERATED, (f"fanstype {order.fanstype!r} present and shop "
                                      f"{shop.shop_id} had authorised channel "
                                      f"{order.channel_id} at the order's time ({how})")


# ---------------------------------------------------------------- the decision


def _tie_break(winner: _Candidate, other: _Candidate) -> str:
    ref = _click_ref(winner.click)
    if winner.click.ts_ms != other.click.ts_ms:
        return f"{ref} is later (last click wins)"
    if (winner.click.shop_id is None) != (other.click.shop_id is None):
        return f"{ref} is at the same millisecond and a link for this shop beats a site-wide link"
    if winner.evidence is not other.evidence:
        return f"{ref} is at the same millisecond and the click store's record beats the token"
    return f"{ref} is at the same millisecond and has the greater click id"


def _mark(notes: dict[Source, CandidateNote], accepted: list[_Candidate],
          winner: _Candidate, decided: bool) -> None:
    for cand in accepted:
        note = notes[cand.source]
        if cand is winner and not decided:
            notes[cand.source] = replace(note, code=Code.BEST_SO_FAR, detail=(
                f"{note.detail}. The best click so far, but the decision waits"))
        elif cand is winner:
            notes[cand.source] = replace(note, code=Code.LAST_CLICK,
                                         detail=f"{note.detail}. Wins: the last valid click")
        elif cand.click.click_id == winner.click.click_id:
            notes[cand.source] = replace(note, code=Code.SAME_CLICK, detail=(
                f"{note.detail}. The same click as the {SOURCE_LABELS[winner.source]}"))
        else:
            notes[cand.source] = replace(note, detail=(
                f"{note.detail}. Valid, but {_tie_break(winner, cand)}"))


def _wait_reason(ctx: _Context, cps: bool, winner: _Candidate | None,
                 pending: Attribution | None, final_attempt: bool) -> str | None:
    """Why the decision must wait for the delayed-attribution schedule, if it must."""
    if final_attempt or not cps:
        return None
    if pending is not None and (winner is None or pending.click_ms >= winner.click.ts_ms):
        return (f"the attribution token names click {pending.click_id} at "
                f"{format_ts_ms(pending.click_ms)}, not in the click store yet"
                + ("" if winner is None else ", and later than the best click found")
                + ": retry")
    if winner is None and ctx.order.buyer_key is not None:
        return ("no valid CPS click yet; one may still arrive in the click store (lag, "
                "fallback): retry before deciding self_operated or none")
    return None


@dataclass(frozen=True, slots=True)
class _Conclusion:
    rule: Rule
    attribution_type: AttributionType | None
    evidence: Evidence
    reason: str
    fanstype_note: CandidateNote
    winner: ClickFacts | None = None
    channel_id: str | None = None


def _cps_conclusion(winner: _Candidate, ctx: _Context, token: _TokenJudgement,
                    fans_detail: str) -> _Conclusion:
    click = winner.click
    found = "found in the click store" if winner.evidence is Evidence.CLICK else \
        "named by the order's attribution_token"
    also = ""
    if winner.evidence is Evidence.CLICK and token.candidate is not None \
            and token.candidate.click.click_id == click.click_id:
        also = " (the attribution_token names it too)"
    reason = (f"last valid click {click.click_id} at {format_ts_ms(click.ts_ms)} by promoter "
              f"{click.promoter_id} via channel {click.channel_id}, "
              f"{format_duration_ms(ctx.at_ms - click.ts_ms)} before the order, {found}{also}")
    note = CandidateNote(Source.FANSTYPE, None, False, Code.CPS_PRIORITY,
                         f"not used, CPS attribution takes priority: {fans_detail}")
    return _Conclusion(Rule.CPS_LAST_CLICK, AttributionType.CPS, winner.evidence, reason, note,
                       winner=click, channel_id=click.channel_id)


def _fallback_conclusion(ctx: _Context, cps: bool, shop_detail: str,
                         notes: Mapping[Source, CandidateNote]) -> _Conclusion:
    """No CPS click (after the final attempt, or none can ever arrive): rules 3 and 4."""
    if not cps:
        prefix = shop_detail
    else:
        seen = [f"{SOURCE_LABELS[n.source]}: {n.code}" for n in notes.values()
                if n.code is not Code.ABSENT]
        prefix = "no valid CPS click" + (f" ({', '.join(seen)})" if seen else " found")
        if not ctx.order.buyer_key and ctx.order.attribution_token is None:
            prefix += " and none can arrive: the order has no buyer_key and no token"
    ok, code, detail = _judge_fanstype(ctx)
    note = CandidateNote(Source.FANSTYPE, None, ok, code, detail)
    reason = f"{prefix}; {detail}"
    if ok:
        return _Conclusion(Rule.SELF_OPERATED, AttributionType.SELF_OPERATED, Evidence.FANSTYPE,
                           reason, note, channel_id=ctx.order.channel_id)
    return _Conclusion(Rule.NOT_ATTRIBUTED, AttributionType.NONE, Evidence.NONE, reason, note)


def _conclude(ctx: _Context, cps: bool, shop_detail: str, notes: Mapping[Source, CandidateNote],
              winner: _Candidate | None, token: _TokenJudgement,
              final_attempt: bool) -> _Conclusion:
    wait = _wait_reason(ctx, cps, winner, token.pending, final_attempt)
    if wait is not None:
        fans_detail = _judge_fanstype(ctx)[2]
        note = CandidateNote(Source.FANSTYPE, None, False, Code.DEFERRED,
                             f"not decided yet, CPS is tried first: {fans_detail}")
        return _Conclusion(Rule.RETRY, None, Evidence.NONE, wait, note)
    if winner is not None:
        return _cps_conclusion(winner, ctx, token, _judge_fanstype(ctx)[2])
    return _fallback_conclusion(ctx, cps, shop_detail, notes)


def decide(order: OrderFacts, shop: ShopFacts, policy: Policy, *,
           shop_click: ClickFacts | None, sitewide_click: ClickFacts | None,
           token: TokenFacts | None, promoters: Mapping[str, PromoterFacts],
           final_attempt: bool) -> Outcome:
    """The attribution of ``order`` (SPEC 7), or RETRY; see the module docstring.

    ``shop_click``/``sitewide_click``: the click store's latest valid click by the
    order's buyer on the shop / on a site-wide link (re-checked here); ``token``:
    ``read_token(...)`` of the order's ``attribution_token`` (None exactly when it
    has none), with the stored click it names; ``promoters``: the promoters of
    these clicks by id; ``final_attempt``: the last run of the delayed schedule.
    """
    _check_inputs(order, shop, token, promoters)
    ctx = _Context(order, shop, policy, promoters)
    cps, shop_detail = cps_attribute(shop, order.created_at_ms, policy)
    notes: dict[Source, CandidateNote] = {}
    accepted: list[_Candidate] = []
    for source, click in ((Source.SHOP_CLICK, shop_click),
                          (Source.SITEWIDE_CLICK, sitewide_click)):
        notes[source], candidate = _judge_store_click(ctx, source, click, cps)
        if candidate is not None:
            accepted.append(candidate)
    judged = _judge_token(ctx, token, (shop_click, sitewide_click), cps, final_attempt)
    notes[Source.TOKEN] = judged.note
    if judged.candidate is not None:
        accepted.append(judged.candidate)
    winner = max(accepted, key=_Candidate.rank) if accepted else None
    conclusion = _conclude(ctx, cps, shop_detail, notes, winner, judged, final_attempt)
    if winner is not None:
        _mark(notes, accepted, winner, decided=conclusion.rule is not Rule.RETRY)
    notes[Source.FANSTYPE] = conclusion.fanstype_note
    explanation = Explanation(
        order_id=order.order_id, shop_id=shop.shop_id, order_created_at_ms=order.created_at_ms,
        buyer_key=order.buyer_key, buyer_account=order.buyer_account,
        final_attempt=final_attempt, policy=policy.describe(), shop_cps=cps,
        shop_detail=shop_detail, candidates=tuple(notes[s] for s in Source),
        rule=conclusion.rule, outcome=str(conclusion.attribution_type or "retry"),
        reason=conclusion.reason)
    click = conclusion.winner
    return Outcome(conclusion.attribution_type, conclusion.evidence, conclusion.reason,
                   explanation, promoter_id=None if click is None else click.promoter_id,
                   channel_id=conclusion.channel_id,
                   position_id=None if click is None else click.position_id,
                   click_id=None if click is None else click.click_id)


def _check_inputs(order: OrderFacts, shop: ShopFacts, token: TokenFacts | None,
                  promoters: Mapping[str, PromoterFacts]) -> None:
    if order.shop_id != shop.shop_id:
        raise _fail("shop", "shop_id", f"{shop.shop_id!r} is not the order's shop "
                                       f"{order.shop_id!r}")
    if (order.attribution_token is None) != (token is None):
        raise _fail("decide", "token", "pass read_token(...) exactly when the order carries "
                                       "an attribution_token")
    for key, promoter in promoters.items():
        if promoter.promoter_id != key:
            raise _fail("promoters", key, f"maps to promoter {promoter.promoter_id!r}")
