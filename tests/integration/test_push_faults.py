"""A push worker SIGKILLed mid-delivery: every event arrives at least once, duplicates
carry the same ``webhook-id``; on SQLite and PostgreSQL, with the real ``cps-push serve``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from tests.integration.db import ledger_engine, ledger_url  # noqa: F401 (fixtures)
from tests.integration.push_harness import (
    RING,
    Receiver,
    add_endpoint,
    delivery_states,
    enqueue,
    events_for,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver("slow", delay_s=0.01)
    yield made
    made.close()


def _serve(url: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, CPS_DATABASE_URL=url, CPS_PUSH_SECRET_KEYS=RING.to_text(),
               CPS_PUSH_TIMEOUT_S="2", CPS_PUSH_LEASE_S="2", CPS_PUSH_POLL_INTERVAL_MS="20",
               CPS_PUSH_REFRESH_S="0.2", CPS_PUSH_METRICS_PORT="0", CPS_LOG_LEVEL="warning",
               CPS_PUSH_RETRY_SCHEDULE_S="0.2,0.2,0.2")
    return subprocess.Popen([sys.executable, "-m", "push_worker.cli", "serve"], env=env)


def test_sigkill_mid_delivery_loses_nothing(ledger_engine: Engine, ledger_url: str,  # noqa: F811
                                            receiver: Receiver) -> None:
    events = []
    for owner in ("p-1", "p-2", "p-3"):
        add_endpoint(ledger_engine, owner, receiver.url)
        events += events_for(owner, 100)
    enqueue(ledger_engine, events)
    worker = _serve(ledger_url)
    try:
        wait_for(lambda: len(receiver.received) >= 60, timeout_s=30, what="some pushes")
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        at_kill = len(receiver.received)
        assert at_kill < len(events)
        worker = _serve(ledger_url)
        wait_for(lambda: delivery_states(ledger_engine) == {"delivered": 300}, timeout_s=60,
                 what="every delivery delivered after the restart")
    finally:
        worker.terminate()
        worker.wait(timeout=10)
    counts = Counter(receiver.ids(None))
    assert set(counts) == {e.event_id for e in events}  # every event at least once
    duplicates = {i: n for i, n in counts.items() if n > 1}
    assert len(duplicates) <= 3 * 32  # at most the claims in flight at the kill
    # Per endpoint, first arrivals are in the order the events were written.
    first_seen: list[str] = []
    for webhook_id in receiver.ids(None):
        if webhook_id not in first_seen:
            first_seen.append(webhook_id)
    for owner in ("p-1", "p-2", "p-3"):
        mine = [e.event_id for e in events if e.promoter_id == owner]
        assert [i for i in first_seen if i in set(mine)] == mine
