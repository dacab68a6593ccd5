"""The attributor: due orders in, decisions (or a later look) out.

Each round claims up to ``batch_max`` due orders (``attribution_worker.pending``),
loads their facts from the ledger database (``facts``: a few queries per
batch), asks the click store for the candidates of each (latest valid click on
the shop, latest site-wide click, the click the order's token names: three
lookups per order, concurrently for up to ``lookup_concurrency`` orders), decides with the
pure rules (``rules.decide``) and writes the outcomes in one transaction:
decisions with their outbox messages, or a later attempt on the delayed
schedule.  A round never blocks on one slow order: lookups have a timeout, and
an order whose lookup failed is simply looked at again after its lease.

Nothing here is specific to a backend: the click store is the narrow
``ClickLookup`` protocol below, which both click stores implement.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Engine

from attribution_worker import facts, metrics, pending
from attribution_worker.pending import Claim
from attribution_worker.rules import (
    ClickFacts,
    Explanation,
    OrderFacts,
    Outcome,
    Policy,
    PromoterFacts,
    ShopFacts,
    TokenFacts,
    decide,
    read_token,
)
from contracts.attribution import AttributionDecision, AttributionType, Evidence
from contracts.cookie import CookieSealer

log = logging.getLogger("cps.attribution.attributor")


class ClickLookup(Protocol):
    """The click store as the attributor reads it (both backends implement it)."""

    async def latest(self, buyer_key: str, shop_id: str, at_ms: int,
                     window_ms: int) -> Any | None: ...

    async def latest_sitewide(self, buyer_key: str, at_ms: int, window_ms: int) -> Any | None: ...

    async def get(self, click_id: str) -> Any | None: ...


def click_facts(stored: Any | None) -> ClickFacts | None:
    """A stored click (any backend's ``StoredClick``) as rules facts."""
    if stored is None:
        return None
    return ClickFacts(click_id=stored.click_id, ts_ms=stored.ts_ms, buyer_key=stored.buyer_key,
                      promoter_id=stored.promoter_id, channel_id=stored.channel_id,
                      position_id=stored.position_id, shop_id=stored.shop_id,
                      product_id=stored.product_id)


@dataclass(frozen=True, slots=True)
class Candidates:
    shop_click: ClickFacts | None
    sitewide_click: ClickFacts | None
    token: TokenFacts | None


@dataclass(frozen=True, slots=True)
class Judgement:
    claim: Claim
    outcome: Outcome


class Attributor:
    def __init__(self, engine: Engine, store: ClickLookup, sealer: CookieSealer, policy: Policy,
                 *, schedule_s: Sequence[int], batch_max: int = 500,
                 lookup_timeout_s: float = 5.0, lease_ms: int = pending.DEFAULT_LEASE_MS,
                 lookup_concurrency: int = 16) -> None:
        self._engine = engine
        self._store = store
        self._sealer = sealer
        self._policy = policy
        self._schedule = tuple(schedule_s)
        self._batch_max = batch_max
        self._lookup_timeout_s = lookup_timeout_s
        self._lease_ms = lease_ms
        # Orders in flight against the click store at once: within its connection pool.
        self._lookups = asyncio.Semaphore(lookup_concurrency)
        self.decided = 0

    # -- one round ---------------------------------------------------------------------

    async def run_once(self, now_ms: int | None = None) -> int:
        """Claim due orders and settle each (decision or reschedule); returns how many."""
        now_ms = _now_ms() if now_ms is None else now_ms
        claims = await asyncio.to_thread(pending.claim_due, self._engine, now_ms,
                                         self._batch_max, self._lease_ms)
        if not claims:
            return 0
        orders = await asyncio.to_thread(facts.load_orders, self._engine,
                                         [c.order_id for c in claims])
        shops = await asyncio.to_thread(facts.load_shops, self._engine,
                                        {o.shop_id for o in orders.values()})
        found = await self._candidates_of([orders.get(c.order_id) for c in claims])
        promoter_ids = {click.promoter_id for result in found if isinstance(result, Candidates)
                        for click in _clicks_of(result)}
        promoters = await asyncio.to_thread(facts.load_promoters, self._engine, promoter_ids)
        judgements = []
        failed: list[str] = []
        for claim, result in zip(claims, found, strict=True):
            order = orders.get(claim.order_id)
            if isinstance(result, BaseException):
                failed.append(f"{claim.order_id} ({result})")
                continue
            if order is None or order.shop_id not in shops:
                continue  # cannot happen short of a deleted row: looked at after its lease
            judgements.append(Judgement(claim, self._judge(claim, order, shops[order.shop_id],
                                                           result, promoters)))
        if failed:
            log.warning("click lookups failed for %d orders, looked at again after their "
                        "lease: %s", len(failed), ", ".join(failed[:3]))
        await asyncio.to_thread(self._record, judgements, _now_ms())
        return len(judgements)

    async def _candidates_of(self, orders: Sequence[OrderFacts | None]
                             ) -> list[Candidates | BaseException]:
        """Every order's candidates: in two round trips where the store batches lookups
        (``latest_many``/``get_many``, the Redis store), else per order, concurrently."""
        latest_many = getattr(self._store, "latest_many", None)
        get_many = getattr(self._store, "get_many", None)
        if latest_many is None or get_many is None:
            return list(await asyncio.gather(*(self._candidates(o) for o in orders),
                                             return_exceptions=True))
        window = self._policy.attribution_window_ms
        queries: list[tuple[str, str | None, int, int]] = []
        tokens: list[TokenFacts | None] = []
        for order in orders:
            if order is not None and order.buyer_key:
                queries += [(order.buyer_key, order.shop_id, order.created_at_ms, window),
                            (order.buyer_key, None, order.created_at_ms, window)]
            token = None
            if order is not None and order.attribution_token is not None:
                token = read_token(self._sealer, order.attribution_token)
            tokens.append(token)
        token_ids = [t.attribution.click_id for t in tokens
                     if t is not None and t.attribution is not None]
        try:
            async with asyncio.timeout(self._lookup_timeout_s):
                latest = iter(await latest_many(queries))
                named = iter(await get_many(token_ids))
        except Exception as err:  # every order of the round is looked at again later
            return [err] * len(orders)
        out: list[Candidates | BaseException] = []
        for order, token in zip(orders, tokens, strict=True):
            shop_click = sitewide = None
            if order is not None and order.buyer_key:
                shop_click, sitewide = click_facts(next(latest)), click_facts(next(latest))
            if token is not None and token.attribution is not None:
                token = token.with_click(click_facts(next(named)))
            out.append(Candidates(shop_click, sitewide, token))
        return out

    async def _candidates(self, order: OrderFacts | None) -> Candidates:
        if order is None:
            return Candidates(None, None, None)
        window = self._policy.attribution_window_ms
        at = order.created_at_ms
        lookups: list[Any] = []
        if order.buyer_key:
            lookups = [self._store.latest(order.buyer_key, order.shop_id, at, window),
                       self._store.latest_sitewide(order.buyer_key, at, window)]
        token = read_token(self._sealer, order.attribution_token) \
            if order.attribution_token is not None else None
        if token is not None and token.attribution is not None:
            lookups.append(self._store.get(token.attribution.click_id))
        async with self._lookups, asyncio.timeout(self._lookup_timeout_s):
            results = await asyncio.gather(*lookups)
        shop_click = click_facts(results[0]) if order.buyer_key else None
        sitewide = click_facts(results[1]) if order.buyer_key else None
        if token is not None and token.attribution is not None:
            token = token.with_click(click_facts(results[-1]))
        return Candidates(shop_click, sitewide, token)

    def _judge(self, claim: Claim, order: OrderFacts, shop: ShopFacts, found: Candidates,
               promoters: dict[str, PromoterFacts]) -> Outcome:
        # Promoters missing from master data stay missing: the explanation says so.
        known = {pid: promoters[pid] for pid in {c.promoter_id for c in _clicks_of(found)}
                 if pid in promoters}
        return decide(order, shop, self._policy, shop_click=found.shop_click,
                      sitewide_click=found.sitewide_click, token=found.token, promoters=known,
                      final_attempt=pending.is_final(claim, self._schedule))

    def _record(self, judgements: Sequence[Judgement], now_ms: int) -> None:
        later: list[tuple[Claim, int]] = []
        decided: list[tuple[Judgement, AttributionDecision]] = []
        for judgement in judgements:
            claim, outcome = judgement.claim, judgement.outcome
            if outcome.retry:
                at = pending.next_attempt_at(claim, self._schedule)
                later.append((claim, at if at is not None else now_ms + self._lease_ms))
            else:
                decided.append((judgement, outcome.to_decision(
                    decided_at_ms=now_ms, attempts=claim.attempts + 1)))
        with self._engine.begin() as connection:
            pending.reschedule_many(connection, later)
            stored = pending.decide_many(connection, [d for _, d in decided])
        metrics.retries.inc(len(later))
        for judgement, decision in decided:
            if decision.order_id in stored:
                self._count(decision.attribution_type, judgement.outcome, judgement.claim,
                            now_ms)
        self.decided += len(stored)

    def _count(self, kind: AttributionType, outcome: Outcome, claim: Claim, now_ms: int) -> None:
        metrics.decisions.labels(kind.value, outcome.explanation.rule.value).inc()
        metrics.delay.labels("first" if claim.attempts == 0 else "later").observe(
            max(0, now_ms - claim.first_seen_at) / 1000)
        if claim.attempts > 0 and outcome.evidence in (Evidence.CLICK, Evidence.TOKEN):
            metrics.late_clicks.inc()

    # -- explain ---------------------------------------------------------------------------

    async def explain(self, order_id: str, *, final_attempt: bool = True) -> Explanation | None:
        """What the rules see for ``order_id`` now: candidates, the deciding rule, why."""
        orders = await asyncio.to_thread(facts.load_orders, self._engine, [order_id])
        order = orders.get(order_id)
        if order is None:
            return None
        shops = await asyncio.to_thread(facts.load_shops, self._engine, [order.shop_id])
        if order.shop_id not in shops:
            return None
        found = await self._candidates(order)
        promoters = await asyncio.to_thread(facts.load_promoters, self._engine,
                                            {c.promoter_id for c in _clicks_of(found)})
        return decide(order, shops[order.shop_id], self._policy, shop_click=found.shop_click,
                      sitewide_click=found.sitewide_click, token=found.token,
                      promoters=promoters, final_attempt=final_attempt).explanation

    # -- the loop --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, idle_s: float = 0.2,
                  linger_s: float = 0.05) -> None:
        """Rounds until ``stop``: at once while full, after ``linger_s`` while a trickle
        (a round has a fixed cost of six statements), after ``idle_s`` when idle."""
        while not stop.is_set():
            try:
                done = await self.run_once()
            except Exception:  # the loop outlives a bad round; the leases bring orders back
                log.exception("attribution round failed")
                done = 0
            if 0 < done < self._batch_max and linger_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), linger_s)
            elif done == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), idle_s)


def _clicks_of(found: Candidates) -> list[ClickFacts]:
    clicks = [found.shop_click, found.sitewide_click,
              found.token.click if found.token is not None else None]
    return [c for c in clicks if c is not None]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
