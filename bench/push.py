"""Push throughput, and what one hanging endpoint does to everyone else's latency.

    python -m bench.push [--database postgresql|sqlite] [--events 20000] [--endpoints 20]
                         [--rate 400] [--seconds 10] [--no-record] [--out DIR]

One real ``cps-push serve`` process (poll interval 50 ms, everything else default:
15 s timeout, claims of 32, 256 requests in flight) on a fresh ledger (PostgreSQL at
127.0.0.1:5432 user postgres, ``cps_bench_<random>``, dropped afterwards; or a SQLite
file), pushing to a fast local receiver in its own process (``bench.push_receiver``:
asyncio + httptools, 204 at once):

1. **throughput**: ``--events`` events queued before the worker starts, spread over
   ``--endpoints`` promoters' endpoints; events/s = events / (last - first
   ``delivered_at``);
2. **latency, no hang**: ``--rate`` events/s over the same endpoints for ``--seconds``,
   written by this process as a writer would (``ledger_db.webhooks.enqueue_events``, a
   transaction every 10 ms); latency = ``delivered_at - created_at`` of each delivery;
3. **latency, one hanging endpoint**: the same, plus one more promoter whose endpoint
   never answers (``/hang``: the worker's 15 s timeout fires) and gets 10 events/s.

Prints a table, writes ``results.json`` and ``push.png`` into ``bench/out/push-<stamp>/``
and appends a section to ``bench/RESULTS.md``.  Targets (issue 9): >= 2,000 events/s, no
measurable effect of the hanging endpoint on the others' p99.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import Engine, make_url

import ledger_db
from bench import report
from contracts.keys import generate_ring
from contracts.webhooks import EventType, WebhookEvent, make_event
from ledger_db import schema, webhooks
from push_worker import endpoints

POSTGRES_URL = os.environ.get("CPS_BENCH_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
RING = generate_ring(("k1",), 32)
HANG_RATE = 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _database(kind: str, workdir: Path) -> Iterator[str]:
    if kind == "sqlite":
        url = f"sqlite:///{workdir / 'ledger.db'}"
        ledger_db.migrate(url)
        yield url
        return
    admin = sqlalchemy.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"cps_bench_{secrets.token_hex(6)}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
        ledger_db.migrate(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _events(phase: str, owner: str, start: int, n: int) -> list[WebhookEvent]:
    now = time.time_ns() // 1_000_000
    return [make_event(EventType.ORDER_PAID, f"{phase}-{owner}-{i}", "paid",
                       occurred_at_ms=now, data={"order_id": f"{phase}-{owner}-{i}",
                                                 "status": "paid", "paid_amount": 12_300},
                       order_id=f"{phase}-{owner}-{i}", promoter_id=owner)
            for i in range(start, start + n)]


def _enqueue(engine: Engine, events: list[WebhookEvent]) -> None:
    with engine.begin() as conn:
        webhooks.enqueue_events(conn, events)


def _worker(url: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, CPS_DATABASE_URL=url, CPS_PUSH_SECRET_KEYS=RING.to_text(),
               CPS_PUSH_POLL_INTERVAL_MS="50", CPS_PUSH_METRICS_PORT="0",
               CPS_LOG_LEVEL="warning")
    return subprocess.Popen([sys.executable, "-m", "push_worker.cli", "serve"], env=env)


def _delivered(engine: Engine, phase: str, exclude: str | None = None
               ) -> tuple[int, list[tuple[int, int]]]:
    d, e = schema.webhook_deliveries, schema.webhook_events
    query = (sqlalchemy.select(d.c.status, d.c.created_at, d.c.delivered_at)
             .join(e, e.c.event_id == d.c.event_id).where(e.c.order_id.like(f"{phase}-%")))
    if exclude is not None:
        query = query.where(d.c.endpoint_id != exclude)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    done = [(int(r[1]), int(r[2])) for r in rows if r[0] == "delivered"]
    return len(rows), done


def _wait_all(engine: Engine, phase: str, exclude: str | None, timeout_s: float
              ) -> list[tuple[int, int]]:
    deadline = time.monotonic() + timeout_s
    while True:
        total, done = _delivered(engine, phase, exclude)
        if len(done) == total or time.monotonic() > deadline:
            return done
        time.sleep(0.2)


def _trickle(engine: Engine, phase: str, owners: list[str], rate: int, seconds: float,
             hang_owner: str | None) -> int:
    per_tick = max(1, rate // 100)
    sent = 0
    hang_sent = 0
    started = time.monotonic()
    tick = 0
    while time.monotonic() - started < seconds:
        batch: list[WebhookEvent] = []
        for k in range(per_tick):
            owner = owners[(sent + k) % len(owners)]
            batch += _events(phase, owner, sent + k, 1)
        if hang_owner is not None and tick % (100 // HANG_RATE) == 0:
            batch += _events(phase, hang_owner, hang_sent, 1)
            hang_sent += 1
        _enqueue(engine, batch)
        sent += per_tick
        tick += 1
        time.sleep(max(0.0, started + tick * 0.01 - time.monotonic()))
    return sent


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (load-independent accounting)."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def run_bench(kind: str, workdir: Path, *, events: int, endpoint_count: int, rate: int,
              seconds: float) -> dict[str, Any]:
    port = _free_port()
    receiver = subprocess.Popen([sys.executable, "-m", "bench.push_receiver", str(port)],
                                stdout=subprocess.PIPE)
    assert receiver.stdout is not None
    receiver.stdout.readline()
    try:
        with _database(kind, workdir) as url:
            return _phases(url, port, events=events, endpoint_count=endpoint_count,
                           rate=rate, seconds=seconds) | {"database": kind}
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)


def _phases(url: str, port: int, *, events: int, endpoint_count: int, rate: int,
            seconds: float) -> dict[str, Any]:
    engine = ledger_db.connect(url)
    sealer = endpoints.SecretSealer(RING)
    owners = [f"p-{i}" for i in range(endpoint_count)]
    with engine.begin() as conn:
        for i, owner in enumerate(owners):
            endpoints.add_endpoint(conn, sealer, owner_kind="promoter", owner_id=owner,
                                   url=f"http://127.0.0.1:{port}/fast/{i}",
                                   allow_http_localhost=True)
        hang = endpoints.add_endpoint(conn, sealer, owner_kind="promoter", owner_id="p-hang",
                                      url=f"http://127.0.0.1:{port}/hang",
                                      allow_http_localhost=True).endpoint_id
    per_owner = events // endpoint_count
    for owner in owners:
        _enqueue(engine, _events("A", owner, 0, per_owner))
    worker = _worker(url)
    try:
        cpu_start = _cpu_s(worker.pid)
        done = _wait_all(engine, "A", None, timeout_s=600)
        cpu_s = _cpu_s(worker.pid) - cpu_start
        span_s = (max(t for _, t in done) - min(t for _, t in done)) / 1000
        throughput = {"events": len(done), "seconds": span_s, "per_s": len(done) / span_s,
                      "worker_cpu_s": cpu_s, "per_cpu_s": len(done) / cpu_s if cpu_s else 0}
        print(f"throughput: {throughput}", file=sys.stderr)
        phases = {}
        for phase, hang_owner in (("B", None), ("C", "p-hang")):
            _trickle(engine, phase, owners, rate, seconds, hang_owner)
            done = _wait_all(engine, phase, hang, timeout_s=120)
            latencies = [float(at - created) for created, at in done]
            phases[phase] = {"events": len(done), "p50_ms": _percentile(latencies, 0.5),
                             "p99_ms": _percentile(latencies, 0.99),
                             "max_ms": max(latencies, default=0.0)}
            print(f"latency {phase}: {phases[phase]}", file=sys.stderr)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        engine.dispose()
    return {"throughput": throughput, "no_hang": phases["B"], "one_hang": phases["C"],
            "endpoints": endpoint_count, "rate": rate, "seconds": seconds}


def render(results: dict[str, Any], command: str) -> str:
    r = results["run"]
    machine = results["machine"]
    t, b, c = r["throughput"], r["no_hang"], r["one_hang"]
    ratio = c["p99_ms"] / b["p99_ms"] if b["p99_ms"] else float("nan")
    return "\n".join([
        f"## {datetime.now(UTC).strftime('%Y-%m-%d %H:%M')} UTC: push worker, {r['database']}",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, Python "
        f"{machine.get('python', '?')}; worker, receiver and database on the same cores "
        f"(load average {results['load']} at the start).",
        "",
        "| phase | events | seconds | events/s | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| throughput ({r['endpoints']} endpoints, queued before start) | {t['events']:,} | "
        f"{t['seconds']:.2f} | **{t['per_s']:,.0f}** | - | - | - |",
        f"| (worker CPU: {t['worker_cpu_s']:.1f} s, i.e. {t['per_cpu_s']:,.0f} events per "
        "CPU-second) | | | | | | |",
        f"| latency, {r['rate']}/s for {r['seconds']:g} s, no hanging endpoint | "
        f"{b['events']:,} | - | - | {b['p50_ms']:.0f} | {b['p99_ms']:.0f} | "
        f"{b['max_ms']:.0f} |",
        f"| latency, same + one hanging endpoint ({HANG_RATE}/s to it) | {c['events']:,} | "
        f"- | - | {c['p50_ms']:.0f} | {c['p99_ms']:.0f} | {c['max_ms']:.0f} |",
        "",
        f"p99 with / without the hanging endpoint: **{ratio:.2f}x**.",
        ""])


def plot(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = results["run"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.bar(["throughput"], [r["throughput"]["per_s"]], color="tab:blue")
    left.axhline(2000, color="tab:red", linestyle="--", label="target 2,000/s")
    left.set_ylabel("events delivered / s")
    left.legend()
    labels = ["p50", "p99", "max"]
    x = range(len(labels))
    right.bar([i - 0.2 for i in x], [r["no_hang"][k + "_ms"] for k in labels], 0.4,
              label="no hanging endpoint")
    right.bar([i + 0.2 for i in x], [r["one_hang"][k + "_ms"] for k in labels], 0.4,
              label="one hanging endpoint")
    right.set_xticks(list(x), labels)
    right.set_ylabel("delivery latency of the others, ms")
    right.legend()
    fig.suptitle(f"cps-push, one worker, {r['database']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.push", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--endpoints", type=int, default=20)
    parser.add_argument("--rate", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    if min(args.events, args.endpoints, args.rate) < 1 or args.seconds <= 0:
        parser.error("--events, --endpoints, --rate and --seconds must be positive")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = args.out or Path(__file__).with_name("out") / f"push-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": report.machine(),
                               "load": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    with tempfile.TemporaryDirectory(dir=out) as workdir:
        results["run"] = run_bench(args.database, Path(workdir), events=args.events,
                                   endpoint_count=args.endpoints, rate=args.rate,
                                   seconds=args.seconds)
    report.write_json(results, out / "results.json")
    plot(results, out / "push.png")
    command = "python -m bench.push " + " ".join(sys.argv[1:] if argv is None else argv)
    text = render(results, command.strip())
    print(text)
    if not args.no_record:
        report.append_results_md(text + f"\nFiles: `{out}` (results.json, push.png).\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
