"""Fixtures starting real servers: Tansu broker, redis-server, moto S3, edge processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from contracts.topics import CLICKS_TOPIC
from devstack.stack import LocalStack
from tests.integration.db import ledger_engine, ledger_url  # noqa: F401 - shared fixtures
from tests.integration.edge_harness import EdgeProcess, Keys


@pytest.fixture
def keys() -> Keys:
    return Keys()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    """A fresh broker (memory storage) and Redis for one test: exact counts, no neighbours."""
    with LocalStack(tmp_path / "stack", topics={CLICKS_TOPIC: 4}) as s:
        yield s


@pytest.fixture
def durable_stack(tmp_path: Path) -> Iterator[LocalStack]:
    """Broker on S3 storage (moto): it can be SIGKILLed and restarted without losing its log."""
    with LocalStack(tmp_path / "stack", topics={CLICKS_TOPIC: 4}, storage="s3") as s:
        yield s


@pytest.fixture
def edge_factory(tmp_path: Path, keys: Keys,
                 request: pytest.FixtureRequest) -> Iterator[Callable[..., EdgeProcess]]:
    started: list[EdgeProcess] = []

    def make(stack: LocalStack | None = None, *, kafka: str | None = None,
             redis: str | None = None, **kwargs: object) -> EdgeProcess:
        edge = EdgeProcess(tmp_path, keys,
                           kafka=kafka or (stack.broker.bootstrap if stack else "127.0.0.1:1"),
                           redis=redis or (stack.redis.url if stack else "redis://127.0.0.1:1/0"),
                           **kwargs)  # type: ignore[arg-type]
        started.append(edge)
        return edge

    yield make
    for edge in started:
        if edge.proc.alive:
            edge.stop()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for edge in started:
            print(f"--- edge log {edge.proc.log_path}\n{edge.log()}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report
