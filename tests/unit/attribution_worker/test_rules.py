"""Last-click attribution rules (attribution_worker.rules): every edge to the millisecond.

Tokens are genuine: sealed by ``contracts.cookie.CookieSealer`` under a real
key ring; forged ones are edited bytes, foreign keys or garbage.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import replace

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from attribution_worker.rules import (
    DAY_MS,
    DEFAULT_CPS_GRACE_MS,
    DEFAULT_SELF_PURCHASE_ALLOWED,
    DEFAULT_WINDOW_MS,
    HOUR_MS,
    ChannelAuthorisation,
    ClickFacts,
    Code,
    CpsPeriod,
    OrderFacts,
    Outcome,
    Policy,
    PromoterFacts,
    Rule,
    RulesInputError,
    SelfPurchase,
    ShopFacts,
    Source,
    TokenFacts,
    channel_authorised,
    cps_attribute,
    decide,
    format_duration_ms,
    format_ts_ms,
    read_token,
)
from contracts.attribution import (
    MAX_REASON_LEN,
    AttributionDecision,
    AttributionType,
    Evidence,
)
from contracts.clicks import ClickEvent, Verdict
from contracts.cookie import Attribution, CookieSealer
from contracts.keys import KeyRing
from contracts.orders import OrderItem, OrderMessage, OrderStatus

T = 1_772_366_400_000  # 2026-03-01T12:00:00.000Z: every order here is created then
W = DEFAULT_WINDOW_MS
SHOP = "s1"
RING = KeyRing((("c1", bytes(range(32))),))
SEALER = CookieSealer(RING)
# Same key id, another secret: what a forger holding no key produces at best.
FORGER = CookieSealer(KeyRing((("c1", bytes(range(32, 64))),)))
RETIRED = CookieSealer(KeyRing((("c0", bytes(range(64, 96))),)))
ALL_SOURCES = tuple(Source)


def cid(ts_ms: int, n: int = 0) -> str:
    """A click id as the edge mints them (48-bit ms + 64 bits), deterministic here."""
    return f"{ts_ms:012x}{n:016x}"


def click(ts_ms: int, *, promoter: str = "p1", shop: str | None = SHOP, buyer: str = "v1",
          channel: str = "live", n: int = 0, position: str | None = "pos1") -> ClickFacts:
    return ClickFacts(click_id=cid(ts_ms, n), ts_ms=ts_ms, buyer_key=buyer, promoter_id=promoter,
                      channel_id=channel, position_id=position, shop_id=shop, product_id="prod1")


def seal(c: ClickFacts, *, visitor: str | None = None, window_end_ms: int | None = None,
         sealer: CookieSealer = SEALER) -> str:
    return sealer.seal(Attribution(
        visitor_id=c.buyer_key if visitor is None else visitor, promoter_id=c.promoter_id,
        channel_id=c.channel_id, click_id=c.click_id, click_ms=c.ts_ms,
        window_end_ms=c.ts_ms + W if window_end_ms is None else window_end_ms))


def cps_shop(**kwargs: object) -> ShopFacts:
    base: dict[str, object] = {
        "shop_id": SHOP, "cps_periods": (CpsPeriod(T - 400 * DAY_MS),),
        "channel_authorisations": (ChannelAuthorisation("live", T - 300 * DAY_MS),)}
    base.update(kwargs)
    return ShopFacts(**base)  # type: ignore[arg-type]


def order(**kwargs: object) -> OrderFacts:
    base: dict[str, object] = {"order_id": "o1", "shop_id": SHOP, "buyer_key": "v1",
                               "buyer_account": "acct-buyer", "created_at_ms": T,
                               "channel_id": "live", "fanstype": None, "attribution_token": None}
    base.update(kwargs)
    return OrderFacts(**base)  # type: ignore[arg-type]


def run(*, the_order: OrderFacts | None = None, shop: ShopFacts | None = None,
        policy: Policy | None = None, shop_click: ClickFacts | None = None,
        sitewide_click: ClickFacts | None = None, token: str | None = None,
        stored: ClickFacts | None = None, promoters: dict[str, PromoterFacts] | None = None,
        final: bool = True) -> Outcome:
    the_order = the_order or order()
    if token is not None:
        the_order = replace(the_order, attribution_token=token)
    facts = None if the_order.attribution_token is None else \
        read_token(SEALER, the_order.attribution_token, stored_click=stored)
    return decide(the_order, shop or cps_shop(), policy or Policy(), shop_click=shop_click,
                  sitewide_click=sitewide_click, token=facts, promoters=promoters or {},
                  final_attempt=final)


def note(outcome: Outcome, source: Source) -> tuple[bool, Code, str]:
    found = [n for n in outcome.explanation.candidates if n.source is source]
    assert len(found) == 1
    return found[0].accepted, found[0].code, found[0].detail


def code(outcome: Outcome, source: Source) -> Code:
    return note(outcome, source)[1]


# ---------------------------------------------------------------- formatting


@pytest.mark.parametrize(("duration_ms", "text"), [
    (0, "0 days 0 h 0 min 0.000 s"),
    (1, "0 days 0 h 0 min 0.001 s"),
    (W + 1, "15 days 0 h 0 min 0.001 s"),
    (W - 1, "14 days 23 h 59 min 59.999 s"),
    (DAY_MS, "1 day 0 h 0 min 0.000 s"),
    (HOUR_MS + 61_001, "0 days 1 h 1 min 1.001 s"),
    (-1, "-0 days 0 h 0 min 0.001 s"),
])
def test_format_duration_is_exact_to_the_ms(duration_ms: int, text: str) -> None:
    assert format_duration_ms(duration_ms) == text


@pytest.mark.parametrize(("ts_ms", "text"), [
    (T, "2026-03-01T12:00:00.000Z"),
    (T - 1, "2026-03-01T11:59:59.999Z"),
    (0, "1970-01-01T00:00:00.000Z"),
    (10**16, "10000000000000000 ms since the epoch"),
])
def test_format_ts_is_utc_to_the_ms(ts_ms: int, text: str) -> None:
    assert format_ts_ms(ts_ms) == text


# ---------------------------------------------------------------- the window


@pytest.mark.parametrize(("ts_ms", "counts", "why"), [
    (T - W, True, Code.LAST_CLICK),
    (T - W - 1, False, Code.OUTSIDE_WINDOW),
    (T - W + 1, True, Code.LAST_CLICK),
    (T, True, Code.LAST_CLICK),
    (T + 1, False, Code.AFTER_ORDER),
    (T - 1, True, Code.LAST_CLICK),
])
def test_store_click_window_edges_to_the_ms(ts_ms: int, counts: bool, why: Code) -> None:
    outcome = run(shop_click=click(ts_ms))
    assert code(outcome, Source.SHOP_CLICK) is why
    if counts:
        assert outcome.attribution_type is AttributionType.CPS
        assert outcome.click_id == cid(ts_ms)
    else:
        assert outcome.attribution_type is AttributionType.NONE
        assert outcome.click_id is None


@pytest.mark.parametrize(("ts_ms", "counts", "why"), [
    (T - W, True, Code.LAST_CLICK),
    (T - W - 1, False, Code.TOKEN_EXPIRED),
    (T, True, Code.LAST_CLICK),
    (T + 1, False, Code.AFTER_ORDER),
])
def test_token_window_edges_to_the_ms(ts_ms: int, counts: bool, why: Code) -> None:
    c = click(ts_ms)
    outcome = run(token=seal(c), stored=c)
    assert code(outcome, Source.TOKEN) is why
    assert (outcome.attribution_type is AttributionType.CPS) is counts
    if counts:
        assert outcome.evidence is Evidence.TOKEN


def test_outside_window_reason_reads_like_the_support_example() -> None:
    c = click(T - W - 1)
    detail = note(run(shop_click=c), Source.SHOP_CLICK)[2]
    assert detail == (f"click {c.click_id} at 2026-02-14T11:59:59.999Z (promoter p1, channel "
                      "live, link for shop s1) is 15 days 0 h 0 min 0.001 s before the order: "
                      "outside the 15-day window")


def test_after_order_reason() -> None:
    detail = note(run(shop_click=click(T + 1)), Source.SHOP_CLICK)[2]
    assert detail.endswith("is 0 days 0 h 0 min 0.001 s after the order: only clicks up to "
                           "the order's creation count")


def test_a_custom_window_is_honoured_and_described() -> None:
    policy = Policy(attribution_window_ms=HOUR_MS + 1)
    assert run(shop_click=click(T - HOUR_MS - 1), policy=policy).attribution_type \
        is AttributionType.CPS
    out = run(shop_click=click(T - HOUR_MS - 2), policy=policy)
    assert code(out, Source.SHOP_CLICK) is Code.OUTSIDE_WINDOW
    assert "outside the 0 days 1 h 0 min 0.001 s window" in note(out, Source.SHOP_CLICK)[2]


# ---------------------------------------------------------------- the CPS attribute


@pytest.mark.parametrize(("periods", "is_cps", "phrase"), [
    ((CpsPeriod(T - 100 * DAY_MS),), True, "not exited"),
    ((CpsPeriod(T - 100 * DAY_MS, T - (15 * DAY_MS - 1)),), True,
     "14 days 23 h 59 min 59.999 s before the order: within the 15-day grace after exit"),
    ((CpsPeriod(T - 100 * DAY_MS, T - 15 * DAY_MS),), False,
     "15 days 0 h 0 min 0.000 s before the order: the 15-day grace after exit had passed"),
    ((CpsPeriod(T - 100 * DAY_MS, T),), True, "0 days 0 h 0 min 0.000 s before the order"),
    ((CpsPeriod(T - 100 * DAY_MS, T + 1),), True, "after the order"),
    ((CpsPeriod(T),), True, "joined commission promotion at 2026-03-01T12:00:00.000Z"),
    ((CpsPeriod(T + 1),), False, "joined commission promotion only at "
                                 "2026-03-01T12:00:00.001Z, after the order"),
    ((), False, "never joined commission promotion"),
    ((CpsPeriod(T - 300 * DAY_MS, T - 200 * DAY_MS), CpsPeriod(T - 10 * DAY_MS)), True,
     "not exited"),
    ((CpsPeriod(T - 300 * DAY_MS, T - 200 * DAY_MS), CpsPeriod(T - 100 * DAY_MS, T - 20 * DAY_MS)),
     False, "exited commission promotion at 2026-02-09T12:00:00.000Z"),
])
def test_cps_attribute(periods: tuple[CpsPeriod, ...], is_cps: bool, phrase: str) -> None:
    shop = cps_shop(cps_periods=periods)
    got, detail = cps_attribute(shop, T, Policy())
    assert got is is_cps
    assert phrase in detail
    assert detail.startswith("shop s1 has the CPS attribute" if is_cps
                             else "shop s1 has no CPS attribute")
    outcome = run(shop=shop, shop_click=click(T - HOUR_MS), final=False)
    if is_cps:
        assert outcome.attribution_type is AttributionType.CPS
    else:
        # No click can make a non-CPS shop CPS: decided at once, no retry.
        assert outcome.attribution_type is AttributionType.NONE
        assert code(outcome, Source.SHOP_CLICK) is Code.NOT_CPS_SHOP
        assert outcome.explanation.shop_detail == detail
        assert outcome.reason.startswith(detail)


def test_cps_grace_is_a_policy_setting() -> None:
    shop = cps_shop(cps_periods=(CpsPeriod(T - 10 * DAY_MS, T - 1),))
    assert cps_attribute(shop, T, Policy(cps_grace_ms=2))[0]
    assert not cps_attribute(shop, T, Policy(cps_grace_ms=1))[0]
    # Grace 0: the period is [joined, exited): exited exactly at T is out.
    at_t = cps_shop(cps_periods=(CpsPeriod(T - 10 * DAY_MS, T),))
    assert not cps_attribute(at_t, T, Policy(cps_grace_ms=0))[0]
    assert cps_attribute(at_t, T - 1, Policy(cps_grace_ms=0))[0]


def test_non_cps_shop_token_is_not_considered() -> None:
    c = click(T - HOUR_MS)
    outcome = run(shop=cps_shop(cps_periods=()), token=seal(c), stored=c, final=False)
    assert outcome.attribution_type is AttributionType.NONE
    assert code(outcome, Source.TOKEN) is Code.NOT_CPS_SHOP


# ---------------------------------------------------------------- CPS before self-operated


def test_cps_takes_priority_over_self_operated() -> None:
    outcome = run(the_order=order(fanstype="fan-1"), shop_click=click(T - HOUR_MS))
    assert outcome.attribution_type is AttributionType.CPS
    assert outcome.explanation.rule is Rule.CPS_LAST_CLICK
    accepted, why, detail = note(outcome, Source.FANSTYPE)
    assert (accepted, why) == (False, Code.CPS_PRIORITY)
    assert detail.startswith("not used, CPS attribution takes priority: fanstype 'fan-1' "
                             "present and shop s1 had authorised channel live")


def test_self_operated_after_the_final_attempt() -> None:
    outcome = run(the_order=order(fanstype="fan-1"))
    assert outcome.attribution_type is AttributionType.SELF_OPERATED
    assert outcome.evidence is Evidence.FANSTYPE
    assert outcome.channel_id == "live"
    assert (outcome.promoter_id, outcome.click_id, outcome.position_id) == (None, None, None)
    assert outcome.explanation.rule is Rule.SELF_OPERATED
    assert code(outcome, Source.FANSTYPE) is Code.SELF_OPERATED
    assert outcome.reason.startswith("no valid CPS click found; fanstype 'fan-1' present")


def test_self_operated_waits_for_the_schedule_on_a_cps_shop() -> None:
    outcome = run(the_order=order(fanstype="fan-1"), final=False)
    assert outcome.retry
    assert outcome.attribution_type is None
    assert outcome.explanation.rule is Rule.RETRY
    assert outcome.explanation.outcome == "retry"
    assert code(outcome, Source.FANSTYPE) is Code.DEFERRED
    assert "retry before deciding self_operated or none" in outcome.reason


def test_self_operated_at_once_on_a_non_cps_shop() -> None:
    outcome = run(the_order=order(fanstype="fan-1"), shop=cps_shop(cps_periods=()), final=False)
    assert outcome.attribution_type is AttributionType.SELF_OPERATED


@pytest.mark.parametrize(("auths", "channel", "ok", "phrase"), [
    ((ChannelAuthorisation("live", T),), "live", True, "authorised at 2026-03-01T12:00:00.000Z"),
    ((ChannelAuthorisation("live", T + 1),), "live", False,
     "authorised only at 2026-03-01T12:00:00.001Z, after the order"),
    ((ChannelAuthorisation("live", 0, T + 1),), "live", True, "revoked at "
                                                             "2026-03-01T12:00:00.001Z, after"),
    ((ChannelAuthorisation("live", 0, T),), "live", False,
     "authorisation revoked at 2026-03-01T12:00:00.000Z, 0 days 0 h 0 min 0.000 s before"),
    ((ChannelAuthorisation("live", 0, T - DAY_MS), ChannelAuthorisation("live", T - HOUR_MS)),
     "live", True, "authorised at"),
    ((ChannelAuthorisation("other", 0),), "live", False, "never authorised"),
    ((), "live", False, "never authorised"),
])
def test_channel_authorisation_at_the_order_time(auths: tuple[ChannelAuthorisation, ...],
                                                 channel: str, ok: bool, phrase: str) -> None:
    shop = cps_shop(channel_authorisations=auths)
    got, how = channel_authorised(shop, channel, T)
    assert got is ok
    assert phrase in how
    outcome = run(the_order=order(fanstype="fan-1"), shop=shop)
    expected = AttributionType.SELF_OPERATED if ok else AttributionType.NONE
    assert outcome.attribution_type is expected
    if not ok:
        assert code(outcome, Source.FANSTYPE) is Code.CHANNEL_NOT_AUTHORISED
        assert outcome.explanation.rule is Rule.NOT_ATTRIBUTED
        assert "had not authorised channel live at the order's time" in outcome.reason
        assert outcome.channel_id is None


def test_fanstype_without_order_channel_is_none() -> None:
    outcome = run(the_order=order(fanstype="fan-1", channel_id=None))
    assert outcome.attribution_type is AttributionType.NONE
    assert code(outcome, Source.FANSTYPE) is Code.NO_ORDER_CHANNEL


def test_nothing_at_all_is_none() -> None:
    outcome = run()
    assert outcome.attribution_type is AttributionType.NONE
    assert outcome.evidence is Evidence.NONE
    assert code(outcome, Source.FANSTYPE) is Code.NO_FANSTYPE
    assert outcome.reason == ("no valid CPS click found; the order's environment carries no "
                              "fanstype")


# ---------------------------------------------------------------- token versus store


def test_later_store_click_beats_earlier_token() -> None:
    earlier, later = click(T - DAY_MS, promoter="p-token"), click(T - HOUR_MS, promoter="p-store")
    outcome = run(shop_click=later, token=seal(earlier), stored=earlier)
    assert (outcome.promoter_id, outcome.evidence) == ("p-store", Evidence.CLICK)
    accepted, why, detail = note(outcome, Source.TOKEN)
    assert (accepted, why) == (True, Code.EARLIER_CLICK)
    assert detail.endswith(f"Valid, but click {later.click_id} at 2026-03-01T11:00:00.000Z is "
                           "later (last click wins)")


def test_later_token_beats_earlier_store_click() -> None:
    earlier, later = click(T - DAY_MS, promoter="p-store"), click(T - HOUR_MS, promoter="p-token",
                                                                  position="pos9")
    outcome = run(shop_click=earlier, token=seal(later), stored=later)
    assert (outcome.promoter_id, outcome.evidence) == ("p-token", Evidence.TOKEN)
    assert outcome.position_id == "pos9"
    assert code(outcome, Source.TOKEN) is Code.LAST_CLICK
    assert code(outcome, Source.SHOP_CLICK) is Code.EARLIER_CLICK
    assert outcome.reason.endswith("named by the order's attribution_token")


def test_same_click_in_store_and_token_is_one_click_recorded_as_click() -> None:
    c = click(T - HOUR_MS)
    outcome = run(shop_click=c, token=seal(c), stored=c)
    assert outcome.evidence is Evidence.CLICK
    assert code(outcome, Source.SHOP_CLICK) is Code.LAST_CLICK
    accepted, why, detail = note(outcome, Source.TOKEN)
    assert (accepted, why) == (True, Code.SAME_CLICK)
    assert detail.endswith("The same click as the store click on shop")
    assert outcome.reason.endswith("(the attribution_token names it too)")


@pytest.mark.parametrize(("candidates", "winner_n", "evidence", "tie_phrase"), [
    # (shop slot, site-wide slot, token click): same millisecond, different clicks
    ((click(T - HOUR_MS, n=1), click(T - HOUR_MS, n=2, shop=None), None), 1, Evidence.CLICK,
     "a link for this shop beats a site-wide link"),
    ((click(T - HOUR_MS, n=1), None, click(T - HOUR_MS, n=2)), 1, Evidence.CLICK,
     "the click store's record beats the token"),
    ((None, click(T - HOUR_MS, n=1, shop=None), click(T - HOUR_MS, n=2)), 2, Evidence.TOKEN,
     "a link for this shop beats a site-wide link"),
    ((click(T - HOUR_MS, n=1), click(T - HOUR_MS, n=2), None), 2, Evidence.CLICK,
     "has the greater click id"),
])
def test_ties_at_the_same_millisecond(
        candidates: tuple[ClickFacts | None, ClickFacts | None, ClickFacts | None],
        winner_n: int, evidence: Evidence, tie_phrase: str) -> None:
    shop_c, site_c, token_c = candidates
    outcome = run(shop_click=shop_c, sitewide_click=site_c,
                  token=None if token_c is None else seal(token_c), stored=token_c)
    assert outcome.click_id == cid(T - HOUR_MS, winner_n)
    assert outcome.evidence is evidence
    losers = [n for n in outcome.explanation.candidates if n.code is Code.EARLIER_CLICK]
    assert len(losers) == 1
    assert tie_phrase in losers[0].detail
    # Swapping the store's slots changes nothing.
    swapped = run(shop_click=site_c, sitewide_click=shop_c,
                  token=None if token_c is None else seal(token_c), stored=token_c)
    assert (swapped.click_id, swapped.evidence) == (outcome.click_id, outcome.evidence)


# ---------------------------------------------------------------- token refusals


def _flip_last_byte(token: str) -> str:
    kid, _, body = token.partition(".")
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw[-1] ^= 0x01
    return kid + "." + base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


GOOD = click(T - HOUR_MS, promoter="p-token")


@pytest.mark.parametrize(("token", "phrase"), [
    (_flip_last_byte(seal(GOOD)), "(key id 'c1') does not unseal: forged, edited"),
    (seal(GOOD, sealer=FORGER), "(key id 'c1') does not unseal"),
    (seal(GOOD, sealer=RETIRED), "(key id 'c0') does not unseal"),
    ("c1.AAAA", "does not unseal"),
    ("not a token", "not of the form KID.BODY"),
])
def test_unreadable_tokens_are_rejected_with_a_reason(token: str, phrase: str) -> None:
    store = click(T - DAY_MS, promoter="p-store")
    outcome = run(shop_click=store, token=token, stored=GOOD)  # the store has GOOD: irrelevant
    assert outcome.promoter_id == "p-store"
    accepted, why, detail = note(outcome, Source.TOKEN)
    assert (accepted, why) == (False, Code.TOKEN_UNREADABLE)
    assert phrase in detail
    assert detail.startswith("rejected: the attribution_token")
    alone = run(token=token)
    assert alone.attribution_type is AttributionType.NONE
    # Without a buyer_key nothing can arrive: decided even before the final attempt.
    assert run(the_order=order(buyer_key=None), token=token, final=False).attribution_type \
        is AttributionType.NONE
    assert run(token=token, final=False).retry


@pytest.mark.parametrize(("text", "problem"), [
    ("", "the attribution_token is empty"),
    ("c1." + "A" * 2000, "the attribution_token is 2003 characters, longer than any sealed "
                         "cookie (1024): unreadable"),
    (".AAAA", "the attribution_token is not of the form KID.BODY: unreadable"),
])
def test_read_token_problems(text: str, problem: str) -> None:
    facts = read_token(SEALER, text)
    assert facts.attribution is None
    assert facts.problem == problem


def test_read_token_round_trip_and_with_click() -> None:
    facts = read_token(SEALER, seal(GOOD))
    assert facts.attribution is not None
    assert facts.attribution.click_id == GOOD.click_id
    assert facts.click is None
    assert facts.with_click(GOOD).click == GOOD


def test_token_whose_sealed_window_ended_before_the_order_is_expired() -> None:
    wide = Policy(attribution_window_ms=30 * DAY_MS)
    c = click(T - 20 * DAY_MS)
    outcome = run(policy=wide, token=seal(c, window_end_ms=T - 1), stored=c)
    accepted, why, detail = note(outcome, Source.TOKEN)
    assert (accepted, why) == (False, Code.TOKEN_EXPIRED)
    assert "expired: its sealed window ended at 2026-03-01T11:59:59.999Z, 0 days 0 h 0 min " \
           "0.001 s before the order" in detail
    # window_end_ms == T still counts (SPEC: inclusive).
    assert run(policy=wide, token=seal(c, window_end_ms=T), stored=c).attribution_type \
        is AttributionType.CPS


@pytest.mark.parametrize(("stored_shop", "policy", "opt_out", "why"), [
    ("s2", Policy(), False, Code.FOREIGN_SHOP),
    (None, Policy(cross_shop_attribution=False), False, Code.CROSS_SHOP_DISABLED),
    (None, Policy(), True, Code.SHOP_OPTED_OUT),
    (None, Policy(), False, Code.LAST_CLICK),
    (SHOP, Policy(cross_shop_attribution=False), True, Code.LAST_CLICK),
])
def test_token_scope_comes_from_its_stored_click(stored_shop: str | None, policy: Policy,
                                                 opt_out: bool, why: Code) -> None:
    c = click(T - HOUR_MS, shop=stored_shop)
    outcome = run(policy=policy, shop=cps_shop(cross_shop_opt_out=opt_out), token=seal(c),
                  stored=c)
    assert code(outcome, Source.TOKEN) is why
    assert (outcome.attribution_type is AttributionType.CPS) is (why is Code.LAST_CLICK)


def test_foreign_shop_token_reason() -> None:
    c = click(T - HOUR_MS, shop="s2")
    detail = note(run(token=seal(c), stored=c), Source.TOKEN)[2]
    assert detail == (f"token for click {c.click_id} at 2026-03-01T11:00:00.000Z (promoter p1, "
                      "channel live, visitor 'v1') is for shop s2, not the order's shop s1")


def test_token_click_not_in_store_retries_then_is_rejected() -> None:
    c = click(T - HOUR_MS)
    waiting = run(token=seal(c), final=False)
    assert waiting.retry
    assert code(waiting, Source.TOKEN) is Code.TOKEN_CLICK_PENDING
    assert waiting.reason == (f"the attribution token names click {c.click_id} at "
                              "2026-03-01T11:00:00.000Z, not in the click store yet: retry")
    # Even without a buyer_key: the token's click may still arrive.
    assert run(the_order=order(buyer_key=None), token=seal(c), final=False).retry
    final = run(token=seal(c))
    assert final.attribution_type is AttributionType.NONE
    accepted, why, detail = note(final, Source.TOKEN)
    assert (accepted, why) == (False, Code.TOKEN_CLICK_UNKNOWN)
    assert "not in the click store after the final attempt: its shop scope cannot be checked" \
        in detail


def test_pending_token_later_than_the_store_click_holds_the_decision() -> None:
    store, later = click(T - DAY_MS, promoter="p-store"), click(T - HOUR_MS, promoter="p-token")
    waiting = run(shop_click=store, token=seal(later), final=False)
    assert waiting.retry
    assert "and later than the best click found" in waiting.reason
    accepted, why, detail = note(waiting, Source.SHOP_CLICK)
    assert (accepted, why) == (True, Code.BEST_SO_FAR)
    assert detail.endswith("The best click so far, but the decision waits")
    final = run(shop_click=store, token=seal(later))
    assert final.promoter_id == "p-store"


def test_pending_token_earlier_than_the_store_click_does_not_wait() -> None:
    earlier, store = click(T - DAY_MS, promoter="p-token"), click(T - HOUR_MS, promoter="p-store")
    outcome = run(shop_click=store, token=seal(earlier), final=False)
    assert outcome.promoter_id == "p-store"
    assert code(outcome, Source.TOKEN) is Code.TOKEN_CLICK_PENDING


def test_token_resolved_through_a_store_candidate_with_the_same_id() -> None:
    c = click(T - HOUR_MS, shop=None)
    outcome = run(sitewide_click=c, token=seal(c), final=False)  # no stored click passed
    assert outcome.attribution_type is AttributionType.CPS
    assert code(outcome, Source.TOKEN) is Code.SAME_CLICK


@pytest.mark.parametrize("field", ["promoter_id", "channel_id", "ts_ms"])
def test_token_disagreeing_with_its_stored_click_is_not_evidence(field: str) -> None:
    c = click(T - HOUR_MS)
    changed: object = {"promoter_id": "p-other", "channel_id": "other", "ts_ms": c.ts_ms + 1}[field]
    stored = replace(c, **{field: changed})  # type: ignore[arg-type]
    outcome = run(token=seal(c), stored=stored)
    accepted, why, detail = note(outcome, Source.TOKEN)
    assert (accepted, why) == (False, Code.TOKEN_MISMATCH)
    label = {"ts_ms": "click time"}.get(field, field)
    assert f"disagrees with the stored click on {label}" in detail


def test_token_with_a_stored_click_of_another_id_is_a_mismatch() -> None:
    c = click(T - HOUR_MS)
    outcome = run(token=seal(c), stored=click(T - HOUR_MS, n=7))
    assert code(outcome, Source.TOKEN) is Code.TOKEN_MISMATCH


def test_token_of_another_visitor_id_is_still_evidence() -> None:
    c = click(T - HOUR_MS, buyer="old-device")
    outcome = run(token=seal(c), stored=c)
    assert outcome.attribution_type is AttributionType.CPS
    assert outcome.evidence is Evidence.TOKEN
    assert "Its visitor id differs from the order's buyer_key 'v1' (another device or cookie " \
           "jar): the seal is evidence in itself" in note(outcome, Source.TOKEN)[2]
    # An order without any buyer_key, too.
    assert run(the_order=order(buyer_key=None), token=seal(c), stored=c).evidence \
        is Evidence.TOKEN


# ---------------------------------------------------------------- store clicks


@pytest.mark.parametrize(("shop_id", "policy", "opt_out", "why"), [
    (None, Policy(), False, Code.LAST_CLICK),
    (None, Policy(cross_shop_attribution=False), False, Code.CROSS_SHOP_DISABLED),
    (None, Policy(), True, Code.SHOP_OPTED_OUT),
    (None, Policy(cross_shop_attribution=False), True, Code.CROSS_SHOP_DISABLED),
    ("s2", Policy(), False, Code.FOREIGN_SHOP),
    (SHOP, Policy(cross_shop_attribution=False), True, Code.LAST_CLICK),
])
def test_site_wide_clicks_and_cross_shop_settings(shop_id: str | None, policy: Policy,
                                                  opt_out: bool, why: Code) -> None:
    c = click(T - HOUR_MS, shop=shop_id)
    outcome = run(policy=policy, shop=cps_shop(cross_shop_opt_out=opt_out), sitewide_click=c)
    assert code(outcome, Source.SITEWIDE_CLICK) is why
    assert (outcome.click_id == c.click_id) is (why is Code.LAST_CLICK)
    # The slot the store used does not matter: scope comes from the click.
    in_shop_slot = run(policy=policy, shop=cps_shop(cross_shop_opt_out=opt_out), shop_click=c)
    assert code(in_shop_slot, Source.SHOP_CLICK) is why


@pytest.mark.parametrize(("why", "phrase"), [
    (Code.CROSS_SHOP_DISABLED, "is site-wide, and cross-shop attribution is disabled "
                               "platform-wide"),
    (Code.SHOP_OPTED_OUT, "is site-wide, and shop s1 opted out of cross-shop attribution"),
])
def test_cross_shop_reasons(why: Code, phrase: str) -> None:
    policy = Policy(cross_shop_attribution=why is not Code.CROSS_SHOP_DISABLED)
    shop = cps_shop(cross_shop_opt_out=why is Code.SHOP_OPTED_OUT)
    outcome = run(policy=policy, shop=shop, sitewide_click=click(T - HOUR_MS, shop=None))
    assert note(outcome, Source.SITEWIDE_CLICK)[2].endswith(phrase)


def test_shop_click_beats_earlier_site_wide_and_vice_versa() -> None:
    shop_c, site_c = click(T - DAY_MS, promoter="p-shop"), click(T - HOUR_MS, promoter="p-site",
                                                                 shop=None)
    assert run(shop_click=shop_c, sitewide_click=site_c).promoter_id == "p-site"
    shop_c, site_c = click(T - HOUR_MS, promoter="p-shop"), click(T - DAY_MS, promoter="p-site",
                                                                  shop=None)
    assert run(shop_click=shop_c, sitewide_click=site_c).promoter_id == "p-shop"


def test_store_click_of_another_buyer_is_rejected() -> None:
    outcome = run(shop_click=click(T - HOUR_MS, buyer="v2"))
    accepted, why, detail = note(outcome, Source.SHOP_CLICK)
    assert (accepted, why) == (False, Code.OTHER_BUYER)
    assert detail.endswith("is by buyer_key 'v2', not the order's 'v1'")


def test_store_click_for_an_order_without_buyer_key_is_rejected() -> None:
    outcome = run(the_order=order(buyer_key=None), shop_click=click(T - HOUR_MS), final=False)
    # Nothing can ever match: decided at once.
    assert outcome.attribution_type is AttributionType.NONE
    assert code(outcome, Source.SHOP_CLICK) is Code.NO_BUYER_KEY
    assert "none can arrive: the order has no buyer_key and no token" in outcome.reason


def test_absent_candidates_are_listed() -> None:
    outcome = run()
    for source in (Source.SHOP_CLICK, Source.SITEWIDE_CLICK, Source.TOKEN):
        assert code(outcome, source) is Code.ABSENT
    assert note(outcome, Source.TOKEN)[2] == "the order carries no attribution_token"
    assert note(outcome, Source.SHOP_CLICK)[2] == "none in the click store"


# ---------------------------------------------------------------- self-purchase


@pytest.mark.parametrize(("platform_allows", "promoter_setting", "credited", "by"), [
    (True, None, True, "the platform default"),
    (False, None, False, "the platform default"),
    (True, SelfPurchase.DENY, False, "the promoter's setting"),
    (False, SelfPurchase.ALLOW, True, "the promoter's setting"),
    (True, SelfPurchase.ALLOW, True, "the promoter's setting"),
    (False, SelfPurchase.DENY, False, "the promoter's setting"),
])
def test_self_purchase_setting(platform_allows: bool, promoter_setting: SelfPurchase | None,
                               credited: bool, by: str) -> None:
    promoters = {"p1": PromoterFacts("p1", account_id="acct-buyer",
                                     self_purchase=promoter_setting)}
    policy = Policy(self_purchase_allowed=platform_allows)
    for kwargs in ({"shop_click": click(T - HOUR_MS)},
                   {"token": seal(click(T - HOUR_MS)), "stored": click(T - HOUR_MS)}):
        outcome = run(policy=policy, promoters=promoters, **kwargs)
        source = Source.SHOP_CLICK if "shop_click" in kwargs else Source.TOKEN
        accepted, why, detail = note(outcome, source)
        assert (outcome.attribution_type is AttributionType.CPS) is credited
        assert by in detail
        if credited:
            assert "A self-purchase (buyer_account is the promoter's own), allowed by" in detail
        else:
            assert (accepted, why) == (False, Code.SELF_PURCHASE)
            assert "is a self-purchase: buyer_account 'acct-buyer' is promoter p1's own " \
                   f"account, and {by} refuses self-purchase" in detail


def test_platform_default_allows_self_purchase() -> None:
    assert DEFAULT_SELF_PURCHASE_ALLOWED is True
    assert Policy().self_purchase_allowed is True


@pytest.mark.parametrize(("buyer_account", "promoter_account"), [
    (None, "acct-buyer"), ("acct-buyer", None), ("acct-buyer", "acct-other")])
def test_not_a_self_purchase_when_accounts_differ_or_are_unknown(
        buyer_account: str | None, promoter_account: str | None) -> None:
    promoters = {"p1": PromoterFacts("p1", account_id=promoter_account,
                                     self_purchase=SelfPurchase.DENY)}
    outcome = run(the_order=order(buyer_account=buyer_account), shop_click=click(T - HOUR_MS),
                  promoters=promoters)
    assert outcome.attribution_type is AttributionType.CPS
    assert "self-purchase" not in note(outcome, Source.SHOP_CLICK)[2]


def test_unknown_promoter_is_not_checked_and_says_so() -> None:
    outcome = run(shop_click=click(T - HOUR_MS), policy=Policy(self_purchase_allowed=False))
    assert outcome.attribution_type is AttributionType.CPS
    assert "Promoter p1 is unknown to the registry: self-purchase not checked" in \
        note(outcome, Source.SHOP_CLICK)[2]


def test_refused_self_purchase_lets_the_next_candidate_win() -> None:
    promoters = {"p-self": PromoterFacts("p-self", account_id="acct-buyer",
                                         self_purchase=SelfPurchase.DENY),
                 "p-other": PromoterFacts("p-other", account_id="acct-x")}
    self_click = click(T - HOUR_MS, promoter="p-self")
    other = click(T - DAY_MS, promoter="p-other", shop=None)
    outcome = run(shop_click=self_click, sitewide_click=other, promoters=promoters)
    assert outcome.promoter_id == "p-other"
    assert code(outcome, Source.SHOP_CLICK) is Code.SELF_PURCHASE
    # The same through the token.
    outcome = run(token=seal(self_click), stored=self_click, sitewide_click=other,
                  promoters=promoters)
    assert (outcome.promoter_id, code(outcome, Source.TOKEN)) == ("p-other", Code.SELF_PURCHASE)
    # Alone, a refused self-purchase is no evidence: retry, then none.
    assert run(shop_click=self_click, promoters=promoters, final=False).retry
    assert run(shop_click=self_click, promoters=promoters).attribution_type \
        is AttributionType.NONE


# ---------------------------------------------------------------- retry versus final


@pytest.mark.parametrize(("kwargs", "final", "retry"), [
    ({}, False, True),  # buyer known, no click yet
    ({}, True, False),
    ({"the_order": order(buyer_key=None)}, False, False),  # nothing can ever arrive
    ({"shop": cps_shop(cps_periods=())}, False, False),  # no CPS attribute
    ({"shop_click": click(T - HOUR_MS)}, False, False),  # found: decided now
    ({"shop_click": click(T - W - 1)}, False, True),  # only an invalid click
    ({"token": seal(GOOD)}, False, True),  # the token's click is pending
    ({"token": seal(GOOD)}, True, False),
    ({"token": seal(GOOD), "stored": GOOD}, False, False),
    ({"the_order": order(buyer_key=None), "token": seal(click(T - W - 1))}, False, False),
])
def test_retry_only_while_waiting_can_change_the_outcome(kwargs: dict[str, object],
                                                         final: bool, retry: bool) -> None:
    outcome = run(final=final, **kwargs)  # type: ignore[arg-type]
    assert outcome.retry is retry
    assert (outcome.explanation.rule is Rule.RETRY) is retry
    if retry:
        assert outcome.evidence is Evidence.NONE
        with pytest.raises(RulesInputError, match=re.escape("a RETRY is not a decision")):
            outcome.to_decision(decided_at_ms=T, attempts=1)


# ---------------------------------------------------------------- explanation


def test_explanation_render_golden() -> None:
    store = click(T - DAY_MS, promoter="p-store")
    later = click(T - HOUR_MS, promoter="p-token", n=1)
    promoters = {"p-store": PromoterFacts("p-store", account_id="acct-s"),
                 "p-token": PromoterFacts("p-token", account_id="acct-t")}
    outcome = run(the_order=order(fanstype="fan-1"), shop_click=store,
                  sitewide_click=click(T - W - 1, shop=None, n=2), token=seal(later),
                  stored=later, promoters=promoters)
    assert outcome.explanation.render() == "\n".join([
        "order o1 in shop s1, created 2026-03-01T12:00:00.000Z (final attempt)",
        "buyer_key 'v1', buyer_account 'acct-buyer'",
        "outcome: cps (rule cps_last_click)",
        f"reason: last valid click {later.click_id} at 2026-03-01T11:00:00.000Z by promoter "
        "p-token via channel live, 0 days 1 h 0 min 0.000 s before the order, named by the "
        "order's attribution_token",
        "shop: shop s1 has the CPS attribute at the order's time: joined commission promotion "
        "at 2025-01-25T12:00:00.000Z, not exited",
        "policy: window 15 days, CPS grace after exit 15 days, cross-shop attribution on, "
        "self-purchase allowed by default",
        "candidates:",
        f"  accepted store click on shop [earlier_click]: click {store.click_id} at "
        "2026-02-28T12:00:00.000Z (promoter p-store, channel live, link for shop s1) is 1 day "
        "0 h 0 min 0.000 s before the order: inside the 15-day window, for this shop. Valid, "
        f"but click {later.click_id} at 2026-03-01T11:00:00.000Z is later (last click wins)",
        f"  rejected store site-wide click [outside_window]: click {cid(T - W - 1, 2)} at "
        "2026-02-14T11:59:59.999Z (promoter p1, channel live, site-wide link) is 15 days 0 h "
        "0 min 0.001 s before the order: outside the 15-day window",
        f"  accepted attribution token [last_click]: token for click {later.click_id} at "
        "2026-03-01T11:00:00.000Z (promoter p-token, channel live, visitor 'v1') is 0 days 1 h "
        "0 min 0.000 s before the order: inside the 15-day window, for this shop. Wins: the "
        "last valid click",
        "  rejected fanstype/channel [cps_priority]: not used, CPS attribution takes priority: "
        "fanstype 'fan-1' present and shop s1 had authorised channel live at the order's time "
        "(authorised at 2025-05-05T12:00:00.000Z)",
    ])


def test_explanation_to_dict_is_json_and_complete() -> None:
    outcome = run(shop_click=click(T - HOUR_MS), token="garbage", final=False)
    data = outcome.explanation.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert [c["source"] for c in data["candidates"]] == [s.value for s in ALL_SOURCES]
    assert data["candidates"][0] == {
        "source": "shop_click", "label": "store click on shop",
        "click_id": cid(T - HOUR_MS), "accepted": True, "code": "last_click",
        "detail": note(outcome, Source.SHOP_CLICK)[2]}
    assert data["candidates"][2]["code"] == "token_unreadable"
    assert data["rule"] == "cps_last_click"
    assert data["outcome"] == "cps"
    assert data["order_created_at"] == T
    assert data["order_created_at_utc"] == "2026-03-01T12:00:00.000Z"
    assert data["final_attempt"] is False
    assert data["shop_cps"] is True


@pytest.mark.parametrize(("kwargs", "first_line_part", "outcome_line"), [
    ({"the_order": order(fanstype="f")}, "(final attempt)",
     "outcome: self_operated (rule self_operated_fanstype)"),
    ({"final": False}, "(not the final attempt)",
     "outcome: retry (rule retry_delayed_attribution)"),
    ({}, "(final attempt)", "outcome: none (rule not_attributed)"),
    ({"the_order": order(buyer_key=None, buyer_account=None)}, "(final attempt)",
     "outcome: none (rule not_attributed)"),
])
def test_explanation_render_for_each_outcome(kwargs: dict[str, object], first_line_part: str,
                                             outcome_line: str) -> None:
    text = run(**kwargs).explanation.render()  # type: ignore[arg-type]
    lines = text.splitlines()
    assert lines[0].endswith(first_line_part)
    assert lines[2] == outcome_line
    assert lines[6] == "candidates:"
    assert len(lines) == 11
    assert all(line.startswith(("  accepted ", "  rejected ")) for line in lines[7:])


def test_explanation_shows_missing_buyer_fields() -> None:
    text = run(the_order=order(buyer_key=None, buyer_account=None)).explanation.render()
    assert "buyer_key (none), buyer_account (none)" in text


# ---------------------------------------------------------------- the decision record


def test_to_decision_validates_against_the_contract() -> None:
    outcome = run(shop_click=click(T - HOUR_MS))
    decision = outcome.to_decision(decided_at_ms=T + 42, attempts=3)
    again = AttributionDecision.from_json(decision.to_json())
    assert again == decision
    assert (again.attribution_type, again.evidence) == (AttributionType.CPS, Evidence.CLICK)
    assert (again.promoter_id, again.channel_id, again.position_id) == ("p1", "live", "pos1")
    assert (again.order_created_at, again.decided_at, again.attempts) == (T, T + 42, 3)
    for kwargs in ({"the_order": order(fanstype="f")}, {}):
        record = run(**kwargs).to_decision(decided_at_ms=T, attempts=1)  # type: ignore[arg-type]
        assert AttributionDecision.from_json(record.to_json()) == record


def test_to_decision_truncates_long_reasons() -> None:
    outcome = run(the_order=order(fanstype="f" * 1000))
    assert len(outcome.reason) > MAX_REASON_LEN
    record = outcome.to_decision(decided_at_ms=T, attempts=1)
    assert len(record.reason) == MAX_REASON_LEN
    assert record.reason.endswith("...")
    AttributionDecision.from_json(record.to_json())


# ---------------------------------------------------------------- inputs


@pytest.mark.parametrize(("build", "message"), [
    (lambda: order(order_id="bad id"), "order.order_id: must be an id"),
    (lambda: order(buyer_key=""), "order.buyer_key: must be a non-empty string"),
    (lambda: order(created_at_ms=-1), "order.created_at_ms: must be an integer"),
    (lambda: order(created_at_ms=True), "order.created_at_ms: must be an integer"),
    (lambda: order(channel_id="a b"), "order.channel_id: must be an id"),
    (lambda: click(T, promoter=""), "click.promoter_id: must be an id"),
    (lambda: replace(click(T), click_id="XYZ"), "click.click_id: must be 28 lowercase hex"),
    (lambda: replace(click(T), ts_ms=1.5), "click.ts_ms: must be an integer"),  # type: ignore[arg-type]
    (lambda: CpsPeriod(T, T - 1), "cps_period.exited_at_ms: must be an integer number of ms >= "),
    (lambda: ChannelAuthorisation("live", T, T - 1), "channel_authorisation.revoked_at_ms"),
    (lambda: ShopFacts(SHOP, cps_periods=[CpsPeriod(0)]), "shop.cps_periods: must be a tuple"),  # type: ignore[arg-type]
    (lambda: ShopFacts(SHOP, cross_shop_opt_out=1), "shop.cross_shop_opt_out: must be True"),  # type: ignore[arg-type]
    (lambda: ShopFacts(SHOP, channel_authorisations=("live",)), "shop.channel_authorisations"),  # type: ignore[arg-type]
    (lambda: PromoterFacts("p1", self_purchase="allow"), "promoter.self_purchase: must be"),  # type: ignore[arg-type]
    (lambda: Policy(attribution_window_ms=0), "policy.attribution_window_ms: must be an "
                                              "integer number of ms >= 1"),
    (lambda: Policy(cps_grace_ms=-1), "policy.cps_grace_ms"),
    (lambda: Policy(cross_shop_attribution="yes"), "policy.cross_shop_attribution"),  # type: ignore[arg-type]
    (lambda: TokenFacts(), "token.problem: exactly one"),
    (lambda: TokenFacts(problem="x", click=click(T)), "token.click: an unreadable token"),
])
def test_bad_facts_raise_naming_the_field(build: object, message: str) -> None:
    with pytest.raises(RulesInputError, match="^" + re.escape(message)):
        build()  # type: ignore[operator]


def test_decide_refuses_inconsistent_arguments() -> None:
    with pytest.raises(RulesInputError,
                       match=re.escape("shop.shop_id: 's2' is not the order's shop 's1'")):
        run(shop=cps_shop(shop_id="s2"))
    with pytest.raises(RulesInputError, match=re.escape("decide.token: pass read_token")):
        decide(order(attribution_token="c1.x"), cps_shop(), Policy(), shop_click=None,
               sitewide_click=None, token=None, promoters={}, final_attempt=True)
    with pytest.raises(RulesInputError, match=re.escape("decide.token")):
        decide(order(), cps_shop(), Policy(), shop_click=None, sitewide_click=None,
               token=read_token(SEALER, "x"), promoters={}, final_attempt=True)
    with pytest.raises(RulesInputError, match=re.escape("promoters.p1: maps to promoter 'p2'")):
        run(promoters={"p1": PromoterFacts("p2")})


def test_facts_from_contract_messages() -> None:
    message = OrderMessage(order_id="o1", shop_id=SHOP, buyer_key="v1", buyer_account="a",
                           created_at=T, status=OrderStatus.CREATED, event_ts=T,
                           items=(OrderItem("i1", "prod1", "cat1", 1, 100),),
                           channel_id="live", fanstype="f", attribution_token="c1.x")
    facts = OrderFacts.from_message(message)
    assert facts == order(buyer_account="a", fanstype="f", attribution_token="c1.x")
    event = ClickEvent(click_id=cid(T), ts=T, verdict=Verdict.VALID, reason="", buyer_key="v1",
                       ip="1.2.3.4", user_agent="ua", referer="", promoter_id="p1",
                       channel_id="live", position_id="pos1", shop_id=SHOP, product_id="prod1")
    assert ClickFacts.from_event(event) == click(T)
    with pytest.raises(RulesInputError, match=re.escape("click.verdict: only valid clicks")):
        ClickFacts.from_event(replace(event, verdict=Verdict.BOT))
    with pytest.raises(RulesInputError, match=re.escape("click.promoter_id")):
        ClickFacts.from_event(replace(event, promoter_id=None))


def test_defaults_match_the_spec() -> None:
    assert DEFAULT_WINDOW_MS == 15 * 24 * 3600 * 1000
    assert DEFAULT_CPS_GRACE_MS == 15 * 24 * 3600 * 1000
    assert Policy().cross_shop_attribution is True


# ---------------------------------------------------------------- properties

# Mostly inside the window, often on its edges, sometimes outside.
_OFFSETS = st.one_of(st.sampled_from([0, 1, -1, W, W + 1, W - 1, -W]),
                     st.integers(0, W), st.integers(-2 * HOUR_MS, W + 2 * HOUR_MS))
_SHOPS = st.sampled_from([SHOP, SHOP, None, "s2"])
_PROMOTERS = st.sampled_from(["p1", "p2", "p3"])


@st.composite
def _clicks(draw: st.DrawFn, n: int) -> ClickFacts:
    return click(T - draw(_OFFSETS), promoter=draw(_PROMOTERS), shop=draw(_SHOPS),
                 buyer=draw(st.sampled_from(["v1", "v1", "v1", "v2"])), n=n)


@st.composite
def _scenarios(draw: st.DrawFn) -> dict[str, object]:
    token_click = draw(st.none() | _clicks(3))
    token = None
    if token_click is not None:
        token = draw(st.sampled_from([
            seal(token_click), seal(token_click, visitor="v9"),
            seal(token_click, window_end_ms=T - 1), _flip_last_byte(seal(token_click))]))
    promoters = {p: PromoterFacts(p, account_id=draw(st.sampled_from(["acct-buyer", "acct-x"])),
                                  self_purchase=draw(st.sampled_from([None, *SelfPurchase])))
                 for p in ("p1", "p2", "p3")}
    return {
        "shop_click": draw(st.none() | _clicks(1)),
        "sitewide_click": draw(st.none() | _clicks(2)),
        "token": token,
        "stored": token_click if draw(st.booleans()) else None,
        "policy": Policy(cross_shop_attribution=draw(st.booleans()),
                         self_purchase_allowed=draw(st.booleans())),
        "shop": cps_shop(cross_shop_opt_out=draw(st.booleans())),
        "promoters": promoters,
        "final": draw(st.booleans()),
    }


def _credited(outcome: Outcome) -> tuple[object, ...]:
    return (outcome.attribution_type, outcome.click_id, outcome.promoter_id, outcome.evidence)


@settings(max_examples=300, deadline=None, database=None)
@given(_scenarios())
def test_property_decision_invariants(scenario: dict[str, object]) -> None:
    outcome = run(**scenario)  # type: ignore[arg-type]
    event(f"outcome {outcome.explanation.outcome}")
    policy, shop = scenario["policy"], scenario["shop"]
    assert isinstance(policy, Policy)
    assert isinstance(shop, ShopFacts)
    candidates = outcome.explanation.candidates
    assert tuple(n.source for n in candidates) == ALL_SOURCES
    winners = [n for n in candidates if n.code is Code.LAST_CLICK]
    if scenario["final"]:
        assert not outcome.retry
    if outcome.retry:
        assert not scenario["final"]
        assert not winners
    if outcome.attribution_type is AttributionType.CPS:
        assert len(winners) == 1
        credited = [c for c in (scenario["shop_click"], scenario["sitewide_click"],
                                scenario["stored"])
                    if isinstance(c, ClickFacts) and c.click_id == outcome.click_id]
        assert credited
        c = credited[0]
        # Never outside the window, never on a foreign shop, never a refused self-purchase.
        assert T - W <= c.ts_ms <= T
        assert c.shop_id in (SHOP, None)
        if c.shop_id is None:
            assert policy.cross_shop_attribution
            assert not shop.cross_shop_opt_out
        promoter = PromoterFacts(c.promoter_id) if scenario["promoters"] is None else \
            scenario["promoters"][c.promoter_id]  # type: ignore[index]
        if promoter.account_id == "acct-buyer":
            allowed = policy.self_purchase_allowed if promoter.self_purchase is None else \
                promoter.self_purchase is SelfPurchase.ALLOW
            assert allowed
        # Later valid clicks always win: no accepted candidate is later than the credited one.
        for n in candidates:
            if n.accepted and n.click_id is not None:
                assert int(n.click_id[:12], 16) <= c.ts_ms
    else:
        assert not winners
        assert outcome.click_id is None
        # Decided without CPS: no click counted.  A RETRY may hold a best click so far.
        if not outcome.retry:
            assert not any(n.accepted for n in candidates if n.source is not Source.FANSTYPE)
    # The store's slots are interchangeable.
    swapped = dict(scenario, shop_click=scenario["sitewide_click"],
                   sitewide_click=scenario["shop_click"])
    assert _credited(run(**swapped)) == _credited(outcome)  # type: ignore[arg-type]
    if not outcome.retry:
        record = outcome.to_decision(decided_at_ms=T, attempts=1)
        assert AttributionDecision.from_json(record.to_json()) == record


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.integers(0, W), min_size=2, max_size=2, unique=True),
       st.permutations(["shop", "site", "token"]))
def test_property_a_later_valid_click_beats_an_earlier_one(offsets: list[int],
                                                           places: list[str]) -> None:
    (offset_a, offset_b), (where_a, where_b) = offsets, places[:2]
    a = click(T - offset_a, promoter="pa", n=1, shop=None if where_a == "site" else SHOP)
    b = click(T - offset_b, promoter="pb", n=2, shop=None if where_b == "site" else SHOP)
    kwargs: dict[str, object] = {}
    for c, where in ((a, where_a), (b, where_b)):
        if where == "token":
            kwargs.update(token=seal(c), stored=c)
        else:
            kwargs["shop_click" if where == "shop" else "sitewide_click"] = c
    outcome = run(**kwargs)  # type: ignore[arg-type]
    assert outcome.promoter_id == ("pa" if offset_a < offset_b else "pb")


@settings(max_examples=200, deadline=None, database=None)
@given(st.integers(-3 * DAY_MS, 3 * DAY_MS))
def test_property_cps_attribute_boundary(exit_offset_ms: int) -> None:
    """Exited at T - x: CPS exactly when x < 15 days (an exit after T is still in promotion)."""
    exited = T - DEFAULT_CPS_GRACE_MS + exit_offset_ms
    shop = cps_shop(cps_periods=(CpsPeriod(0, exited),))
    assert cps_attribute(shop, T, Policy())[0] is (T - exited < DEFAULT_CPS_GRACE_MS)
