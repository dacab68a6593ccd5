"""A worker SIGKILLed mid-load: every valid 302 with a cookie still reaches Kafka.

The edge runs two granian workers against a real Tansu broker.  Each delivery
round lingers 1.5 s, so at any moment a worker holds hundreds of accepted
clicks in memory: exactly what a SIGKILL or the OOM killer used to lose.  The
worker holding the load's connections is killed with SIGKILL while the load
runs; granian starts a successor, which adopts the dead worker's hand-off
ring (as the sibling would, a few seconds later).  The load generator keeps
the click id of every valid 302 that carried a cookie, and the whole topic is
read back: nothing may be missing; duplicates (clicks whose batch was in
flight at the kill) are counted by click id.  The same scenario with the ring
turned off loses clicks, which shows the test can see a loss.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
from collections.abc import Callable

import psutil
import pytest

from contracts.topics import CLICKS_TOPIC
from devstack.kafka_admin import read_topic
from devstack.stack import LocalStack
from tests.integration.edge_harness import EdgeProcess, Keys, click_ids_in
from tests.integration.test_click_delivery import BackgroundLoad, metrics_until, until

pytestmark = pytest.mark.integration

SLOW_ROUNDS = {"CPS_DELIVERY_LINGER_MS": "1500", "CPS_BATCH_MAX_EVENTS": "20000"}
RING_REPLAYED = 'cps_edge_clicks_replayed_total{source="ring"}'


def workers_of(edge: EdgeProcess) -> list[psutil.Process]:
    assert edge.proc.pid is not None
    # granian forks its workers straight from the main process.
    return [p for p in psutil.Process(edge.proc.pid).children()
            if p.status() != psutil.STATUS_ZOMBIE]


async def kill_one_worker_mid_load(edge: EdgeProcess, keys: Keys) -> tuple[list[str], int]:
    """Load, SIGKILL one worker, load on; the click ids of valid 302s with a cookie."""
    await until(lambda: len(workers_of(edge)) == 2, "two workers")
    load = BackgroundLoad(edge, keys, concurrency=16)
    await load.more(1500, "before the kill")
    victim = busiest(workers_of(edge), edge.port)
    os.kill(victim.pid, signal.SIGKILL)
    await until(lambda: not victim.is_running() or victim.status() == psutil.STATUS_ZOMBIE,
                "the worker to die")
    await until(lambda: len(workers_of(edge)) == 2, "granian to start a successor", timeout=60)
    await load.more(1500, "after the kill")
    result = await load.finish()
    sent = [r.click_id for r in result.responses
            if r.verdict == "valid" and r.click_id and "set-cookie" in r.headers]
    assert len(sent) >= 3000
    return sent, len(result.errors)


def busiest(workers: list[psutil.Process], port: int) -> psutil.Process:
    """The worker holding the most client connections: the one with clicks in memory.

    The kernel hands keep-alive connections to whichever worker accepts first, so
    on a loaded machine one worker may serve all of them while the other idles.
    """
    def held(worker: psutil.Process) -> int:
        return sum(1 for c in worker.net_connections(kind="tcp")
                   if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port)
    return max(workers, key=held)


def both_workers_drained(m: dict[str, float]) -> bool:
    return (m['cps_edge_delivery_mode{mode="kafka"}'] == 2
            and m["cps_edge_spool_pending_records"] == 0
            and m["cps_edge_fallback_pending_records"] == 0
            and m["cps_edge_buffer_events"] == 0)


async def test_sigkilled_worker_loses_no_click(stack: LocalStack, keys: Keys,
                                               edge_factory: Callable[..., EdgeProcess]) -> None:
    edge = edge_factory(stack, workers=2, env=SLOW_ROUNDS).start()
    sent, errors = await kill_one_worker_mid_load(edge, keys)
    m = await metrics_until(edge, "the dead worker's ring replayed and everything drained",
                            lambda m: m[RING_REPLAYED] > 0 and both_workers_drained(m),
                            timeout=60)
    records = await read_topic(stack.broker.bootstrap, CLICKS_TOPIC, timeout=30)
    got = collections.Counter(click_ids_in(records))
    missing = set(sent) - set(got)
    duplicates = sum(c - 1 for c in got.values())
    print(f"{len(sent)} valid 302s with a cookie; {errors} connections cut by the kill; "
          f"{m[RING_REPLAYED]:.0f} clicks recovered from the dead worker's ring; "
          f"Kafka holds {sum(got.values())} valid events, {duplicates} duplicates")
    assert not missing, f"{len(missing)} of {len(sent)} valid clicks lost with the worker"
    # Recovered clicks that had been acknowledged just before the kill come twice,
    # never more: at most the dead worker's last round.
    assert duplicates <= m[RING_REPLAYED]
    assert all(c <= 2 for c in got.values())


async def test_without_the_ring_the_same_kill_loses_clicks(
        stack: LocalStack, keys: Keys, edge_factory: Callable[..., EdgeProcess]) -> None:
    edge = edge_factory(stack, workers=2,
                        env={**SLOW_ROUNDS, "CPS_HANDOFF_RING_BYTES": "0"}).start()
    sent, _ = await kill_one_worker_mid_load(edge, keys)
    await metrics_until(edge, "everything drained", both_workers_drained, timeout=60)
    await asyncio.sleep(1)
    records = await read_topic(stack.broker.bootstrap, CLICKS_TOPIC, timeout=30)
    missing = set(sent) - set(click_ids_in(records))
    print(f"without the ring: {len(missing)} of {len(sent)} valid clicks lost")
    assert missing, "the scenario must be able to lose clicks, or the ring test proves nothing"
