"""The push metrics' ledger collector: backlog and endpoints by status, at scrape time."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

import ledger_db
from contracts.keys import generate_ring
from contracts.webhooks import EventType, make_event
from ledger_db import webhooks
from push_worker import endpoints
from push_worker.metrics import LedgerCollector

SEALER = endpoints.SecretSealer(generate_ring(("k1",), 32))


def test_backlog_and_endpoints_are_read_from_the_ledger(tmp_path: Path) -> None:
    engine = ledger_db.connect(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger_db.migrate(engine)
    with engine.begin() as conn:
        endpoints.add_endpoint(conn, SEALER, owner_kind="promoter", owner_id="p-1",
                               url="https://hooks.example.com/")
        webhooks.enqueue_events(conn, [make_event(EventType.ORDER_PAID, f"o-{i}", "paid",
                                                  occurred_at_ms=1, data={},
                                                  promoter_id="p-1") for i in range(3)])
    registry = CollectorRegistry()
    registry.register(LedgerCollector(engine))
    text = generate_latest(registry).decode()
    engine.dispose()
    assert 'cps_push_backlog{status="pending"} 3.0' in text
    assert 'cps_push_backlog{status="dead"} 0.0' in text
    assert 'cps_push_endpoints{status="active"} 1.0' in text


def test_an_unreachable_ledger_yields_nothing(tmp_path: Path) -> None:
    engine = ledger_db.connect(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    registry = CollectorRegistry()
    registry.register(LedgerCollector(engine))
    assert "cps_push_backlog" not in generate_latest(registry).decode()
    engine.dispose()
