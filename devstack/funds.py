"""A stand-in for the funds system: answers charge requests, failing or delaying some on demand.

``FundsStandIn`` consumes ``CHARGE_REQUESTS_TOPIC`` (consumer group ``cps-funds-standin``)
and answers each request on ``CHARGE_RESULTS_TOPIC``, keyed by ``order_id``, like the
real funds system would: ``charged``, or ``failed`` with a reason when the
``FailurePlan`` says so:

* ``orders``: these orders' charges fail, every attempt or only the first ``attempts``;
* ``flaky``: these orders' first attempt fails, the retry is charged;
* ``every``: every Nth distinct request fails (1-based: with 3, the 3rd, 6th, ...);
* ``ratio``: that share of requests fails, chosen by a hash of ``seed`` and the charge
  id, so the same run fails the same charges whatever the order of arrival.

Like the real one it is idempotent per ``charge_id``: a request seen again (an outbox
replay) gets the first answer again.  ``delay_s`` holds answers that long (all of them,
or only those of ``delay_orders``) without holding the others back.  Offsets are
committed only up to the oldest request not yet answered, so a stopped stand-in
answers the rest after a restart (it forgets its answers then: ``every`` counts anew).

Used by the tests as a library (``await FundsStandIn(...).start()`` ... ``stop()``) and
by ``cps-dev funds`` for the demo.  Not for production: it moves no money.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from contracts.charges import ChargeRequest, ChargeResult, ChargeSchemaError, ChargeStatus
from contracts.topics import CHARGE_REQUESTS_TOPIC, CHARGE_RESULTS_TOPIC

log = logging.getLogger("cps.devstack.funds")

GROUP_ID = "cps-funds-standin"
_HASH_SPACE = 2**64


@dataclass(frozen=True, slots=True)
class FailurePlan:
    orders: frozenset[str] = frozenset()
    attempts: int | None = None  # orders fail only their first N attempts (None: all)
    flaky: frozenset[str] = frozenset()  # fail their first attempt only
    every: int = 0  # every Nth distinct request fails (0: none)
    ratio: float = 0.0  # share of requests failing, 0.0 .. 1.0, by seeded hash
    seed: int = 0

    def __post_init__(self) -> None:
        if self.attempts is not None and self.attempts < 1:
            raise ValueError("attempts: at least 1 (or None for every attempt)")
        if self.every < 0:
            raise ValueError("every: 0 (none) or a positive count")
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError("ratio: from 0 to 1")

    def reason(self, request: ChargeRequest, sequence: int) -> str | None:
        """Why the ``sequence``-th distinct request (1-based) fails; None: it is charged."""
        if request.order_id in self.orders and (self.attempts is None
                                                or request.attempt <= self.attempts):
            return "insufficient funds (stand-in: failing order)"
        if request.order_id in self.flaky and request.attempt == 1:
            return "temporarily unavailable (stand-in: flaky order)"
        if self.every and sequence % self.every == 0:
            return f"declined (stand-in: every {self.every}th request)"
        if self.ratio and _share(self.seed, request.charge_id) < self.ratio:
            return f"declined (stand-in: {self.ratio:.0%} of requests, seed {self.seed})"
        return None


def _share(seed: int, charge_id: str) -> float:
    digest = hashlib.blake2b(f"{seed}:{charge_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _HASH_SPACE


@dataclass(order=True, slots=True)
class _Due:
    at: float  # time.monotonic()
    seq: int
    tp: TopicPartition = field(compare=False)
    offset: int = field(compare=False)
    result: ChargeResult | None = field(compare=False)  # None: unreadable, nothing to send


class FundsStandIn:
    def __init__(self, bootstrap: str, *, plan: FailurePlan | None = None,
                 delay_s: float = 0.0, delay_orders: Collection[str] | None = None,
                 group_id: str = GROUP_ID, batch_max: int = 500,
                 on_answer: Callable[[ChargeResult], None] | None = None) -> None:
        self._bootstrap = bootstrap
        self.plan = plan or FailurePlan()
        self._delay_s = max(0.0, delay_s)
        self._delay_orders = None if delay_orders is None else frozenset(delay_orders)
        self._group_id = group_id
        self._batch_max = batch_max
        self._on_answer = on_answer
        self.answers: dict[str, ChargeResult] = {}  # by charge_id
        self.sent = 0  # answers produced, repeated ones included
        self.bad = 0  # unreadable requests (logged, not answered)
        self._due: list[_Due] = []
        self._seq = itertools.count()
        self._outstanding: dict[TopicPartition, set[int]] = {}
        self._consumed: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="funds-standin")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while not self._stopping.is_set():
            consumer = AIOKafkaConsumer(
                CHARGE_REQUESTS_TOPIC, bootstrap_servers=self._bootstrap,
                group_id=self._group_id, enable_auto_commit=False,
                auto_offset_reset="earliest", max_poll_records=self._batch_max)
            producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap, acks="all",
                                        enable_idempotence=False, linger_ms=2)
            try:
                await consumer.start()
                await producer.start()
                await self._serve(consumer, producer)
            except KafkaError as err:
                log.warning("funds stand-in: kafka %s (%s); reconnecting", self._bootstrap, err)
                self._forget_pending()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 1.0)
            finally:
                with contextlib.suppress(KafkaError, OSError):
                    await producer.stop()
                with contextlib.suppress(KafkaError, OSError):
                    await consumer.stop()

    async def _serve(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
        while not self._stopping.is_set():
            wait_ms = 200
            if self._due:
                wait_ms = max(0, min(wait_ms, int((self._due[0].at - time.monotonic()) * 1000)))
            batches = await consumer.getmany(timeout_ms=wait_ms, max_records=self._batch_max)
            for tp, records in batches.items():
                for record in records:
                    self._take(tp, record.offset, record.value or b"")
            await self._send_due(producer)
            await self._commit(consumer)

    def _take(self, tp: TopicPartition, offset: int, raw: bytes) -> None:
        self._outstanding.setdefault(tp, set()).add(offset)
        self._consumed[tp] = offset + 1
        try:
            request = ChargeRequest.from_json(raw)
        except ChargeSchemaError as err:
            self.bad += 1
            log.warning("funds stand-in: unreadable request at %s:%d (%s)", tp, offset, err)
            heapq.heappush(self._due, _Due(time.monotonic(), next(self._seq), tp, offset, None))
            return
        result = self.answers.get(request.charge_id)
        if result is None:
            reason = self.plan.reason(request, len(self.answers) + 1)
            result = ChargeResult(
                request.charge_id, request.order_id,
                ChargeStatus.FAILED if reason else ChargeStatus.CHARGED, reason or "",
                time.time_ns() // 1_000_000)
            self.answers[request.charge_id] = result
        delayed = self._delay_orders is None or request.order_id in self._delay_orders
        due = time.monotonic() + (self._delay_s if delayed else 0.0)
        heapq.heappush(self._due, _Due(due, next(self._seq), tp, offset, result))

    async def _send_due(self, producer: AIOKafkaProducer) -> None:
        now = time.monotonic()
        ready: list[_Due] = []
        while self._due and self._due[0].at <= now:
            ready.append(heapq.heappop(self._due))
        futures = [await producer.send(CHARGE_RESULTS_TOPIC, due.result.to_json(),
                                       key=due.result.order_id.encode())
                   for due in ready if due.result is not None]
        await asyncio.gather(*futures)
        for due in ready:
            self._outstanding[due.tp].discard(due.offset)
            if due.result is not None:
                self.sent += 1
                if self._on_answer is not None:
                    self._on_answer(due.result)

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        """Up to the oldest request not answered yet, per partition."""
        offsets = {tp: min(self._outstanding[tp], default=end)
                   for tp, end in self._consumed.items()}
        offsets = {tp: o for tp, o in offsets.items() if self._committed.get(tp) != o}
        if offsets:
            with contextlib.suppress(KafkaError):  # a rebalance: replayed, answered again
                await consumer.commit(offsets)
                self._committed.update(offsets)

    def _forget_pending(self) -> None:
        """After a reconnect the group replays from the committed offsets."""
        self._due.clear()
        self._outstanding.clear()
        self._consumed.clear()
        self._committed.clear()
