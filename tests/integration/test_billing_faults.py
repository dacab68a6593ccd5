"""Billing runs under faults, on SQLite and PostgreSQL: SIGKILL, two runs at once, tampering.

The world: 24 orders of one to three lines on two channels (CPS with two promoters,
self-operated, not attributed), some refunded before accrual, some failed charges, the
promoter of channel C1 at T+7 and everyone else at T+15.  Three runs take it from
payment to payout: day 2 accrues and requests the charges; day 9 re-allocates the
refunds made before settlement, settles C1's promoters and pays them out; day 20 settles
the rest, claws back refunds made after settlement and pays out again.

* **Killed**: ``cps-billing run`` runs in a subprocess (this module is the driver, see
  ``drive``) with 2 orders a batch and 30 ms of rest between batches, and gets SIGKILL
  once the run's cursor has passed a random order (twice in the settlement run), or,
  with the driver's ``--pause-in batch:N`` / ``payout:N`` hook, while it sleeps inside
  the N-th batch's (or payout batch's) transaction after writing its transfers.  A rerun
  resumes the run, and the final ledger (every transfer with its id, accounts, amount
  and run; the commission lines; the payouts; the charges and their outbox requests) is
  the one an uninterrupted run wrote over the same world (``reference``: the same
  database, before the module's tests, then wiped).
* **Two at once**: of two runs started together exactly one works, the other exits 3;
  one started with ``--wait`` after the first waits for it and then finds nothing to do.
* A failed charge is never settled, whatever happens to the runs.
* **Tampered**: a transfer deleted or an amount changed by SQL makes ``cps-billing
  reconcile`` exit 1 naming the order, and a run refuses to start (exit 1, nothing
  written).

The kill points come from ``CPS_FAULT_SEED`` (default: random, printed on failure).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import Engine

import ledger_db
from billing_batch import store
from billing_batch.ledger import Code, Transfer
from billing_batch.run import RunOptions, RunSummary, run_billing
from ledger_db import schema
from tests.integration.billing_world import DAY0, DAY_MS, BillingWorld
from tests.integration.db import ledger_engine, ledger_url  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ORDERS = tuple(f"O{n:03d}" for n in range(24))
FAILED = frozenset(f"O{n:03d}" for n in range(24) if n % 7 == 3)
RUN_DAYS = (2, 9, 20)
BATCH_SIZE = 2
PAUSE_S = 0.03
SEED = int(os.environ.get("CPS_FAULT_SEED") or random.randrange(1 << 32))


# -- the driver: this module run as a script -------------------------------------------------

def drive(argv: Sequence[str]) -> int:
    """``python -m tests.integration.test_billing_faults [--pause-in batch:N|payout:N
    --marker FILE] <cps-billing arguments>``: the CLI, with an optional pause (60 s) inside
    the N-th batch or payout transaction, right after its transfers are written; the
    transfer ids go to ``FILE`` first, so the test knows when to kill."""
    args = list(argv)
    if args[:1] == ["--pause-in"]:
        _pause_inside(args[1], Path(args[3]))
        args = args[4:]
    from billing_batch import cli

    try:
        cli.build_parser()
    except ImportError:  # an optional command group is not there yet: run without it
        cli._mount_optional = lambda commands: None
    return cli.main(args)


def _pause_inside(where: str, marker: Path) -> None:
    phase, _, nth = where.partition(":")
    original = store.insert_transfers
    calls = {"batch": 0, "payout": 0}

    def insert_transfers(conn: sqlalchemy.Connection, transfers: Sequence[Transfer], *,
                         run_id: str, as_of_ms: int) -> None:
        original(conn, transfers, run_id=run_id, as_of_ms=as_of_ms)
        kind = "payout" if transfers and transfers[0].code is Code.PAYOUT else "batch"
        calls[kind] += 1
        if kind == phase and calls[kind] == int(nth):
            partial = marker.with_suffix(".partial")
            partial.write_text(json.dumps([str(t.transfer_id) for t in transfers]))
            partial.rename(marker)  # whole or absent: the test reads it once it exists
            time.sleep(60)

    store.insert_transfers = insert_transfers


# -- the world --------------------------------------------------------------------------------

def paid_item(n: int) -> int:
    return 1_000 + 137 * n


def pay(world: BillingWorld) -> None:
    world.schedule("C1", "promoter", days=7)
    for n, order in enumerate(ORDERS):
        items = [(f"I{k}", paid_item(n) + 1_000 * k) for k in range(1 + n % 3)]
        channel = ("C1", "C2")[n // 2 % 2]
        if n % 11 == 5:
            world.paid_order(order, items, promoter=None, channel=channel)
        elif n % 13 == 7:
            world.paid_order(order, items, promoter=None, channel=channel,
                             attribution="self_operated")
        else:
            world.paid_order(order, items, promoter=("P1", "P2")[n % 2], channel=channel)
        if n % 5 == 1:
            world.refund(order, "I0", 250)


def charged_orders(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sqlalchemy.select(schema.billing_charges.c.order_id)
                                 .order_by(schema.billing_charges.c.order_id)).scalars())


def receive_and_charge(world: BillingWorld) -> None:
    for order in ORDERS:
        world.receive(order, at_ms=DAY0 + DAY_MS)
    for order in charged_orders(world.engine):
        world.charge(order, "failed" if order in FAILED else "charged")
    for n, order in enumerate(ORDERS):
        if n % 4 == 2:
            world.refund(order, "I0", paid_item(n) // 4)          # before settlement
        if n % 9 == 4:
            world.refund(order, "I0", 100, pending=True)          # holds the order


def refund_after_settlement(world: BillingWorld) -> None:
    for n, order in enumerate(ORDERS):
        if n % 6 == 0:  # C1's promoters were settled on day 9: clawed back
            left = paid_item(n) - (250 if n % 5 == 1 else 0) - (
                paid_item(n) // 4 if n % 4 == 2 else 0)
            world.refund(order, "I0", left)
        if n % 9 == 4 and n % 2 == 0:
            world.complete_pending_refund(order, "I0")


FACTS: tuple[Callable[[BillingWorld], None], ...] = (pay, receive_and_charge,
                                                     refund_after_settlement)


def as_of(run: int) -> int:
    return DAY0 + RUN_DAYS[run] * DAY_MS


def in_process(engine: Engine, run: int, **options: Any) -> RunSummary:
    return run_billing(engine, RunOptions(as_of_ms=as_of(run), batch_size=BATCH_SIZE,
                                          wait_s=10, **options))


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Everything a run writes that must not depend on how often it was interrupted."""
    def rows(table: sqlalchemy.Table, *skip: str) -> list[tuple[Any, ...]]:
        columns = [column for column in table.c if column.name not in skip]
        with engine.connect() as conn:
            return sorted(tuple(row) for row in conn.execute(sqlalchemy.select(*columns)))

    return {
        "transfers": rows(schema.ledger_transfers),
        "lines": rows(schema.commission_lines, "accrued_at", "updated_at"),
        "payouts": rows(schema.payouts),
        "charges": rows(schema.billing_charges, "requested_at", "updated_at"),
        "requests": rows(schema.outbox, "id", "payload", "created_at", "published_at"),
        "accounts": rows(schema.ledger_accounts, "created_at"),
    }


@pytest.fixture(scope="module")
def reference(ledger_url: str) -> dict[str, list[tuple[Any, ...]]]:  # noqa: F811
    """The ledger of the three runs, uninterrupted, in batches of 7 (batching changes
    nothing), written before the module's first test and then wiped: every test starts
    from an empty database and must end with these rows."""
    engine = ledger_db.connect(ledger_url)
    try:
        world = BillingWorld(engine)
        world.standard_rates()
        for run, facts in enumerate(FACTS):
            facts(world)
            run_billing(engine, RunOptions(as_of_ms=as_of(run), batch_size=7))
        assert world.reconcile().ok
        return snapshot(engine)
    finally:
        with engine.begin() as conn:
            for table in reversed(schema.metadata.sorted_tables):
                conn.execute(table.delete())
        engine.dispose()


@pytest.fixture
def world(ledger_engine: Engine) -> BillingWorld:  # noqa: F811
    world = BillingWorld(ledger_engine)
    world.standard_rates()
    return world


# -- runs in other processes --------------------------------------------------------------------

_FORK = multiprocessing.get_context("fork")
_LIVE: list[CliProcess] = []


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test() -> Iterator[None]:
    yield
    while _LIVE:
        proc = _LIVE.pop()
        if proc.poll() is None:
            proc.kill()


class CliProcess:
    """``cps-billing ARGS`` in a forked process: its own connections and run lock, killable.

    Forked rather than started afresh: importing the CLI costs 1-3 s an interpreter on a
    busy machine, a fork nothing; the child never touches the parent's connections.
    """

    def __init__(self, engine: Engine, args: Sequence[str], *, pause_in: str | None = None,
                 marker: Path | None = None) -> None:
        self.out, self.err = (Path(tempfile.mkstemp(suffix=f".{name}")[1])
                              for name in ("out", "err"))
        hook = ["--pause-in", pause_in, "--marker", str(marker)] if pause_in else []
        argv = [*hook, "--database-url", engine.url.render_as_string(hide_password=False),
                *args]
        self.process = _FORK.Process(target=_child, args=(argv, self.out, self.err),
                                     daemon=True)
        self.process.start()
        _LIVE.append(self)

    def poll(self) -> int | None:
        return self.process.exitcode

    def finish(self, timeout_s: float = 60) -> tuple[int, str, str]:
        """Wait for the exit: (exit code, stdout, stderr)."""
        self.process.join(timeout_s)
        if self.process.exitcode is None:
            self.kill()
            pytest.fail(f"cps-billing did not finish in {timeout_s} s (seed {SEED})")
        return self.process.exitcode, self._read(self.out), self._read(self.err)

    def kill(self) -> None:
        assert self.process.pid is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(10)
        assert self.process.exitcode == -signal.SIGKILL
        self._read(self.out), self._read(self.err)

    @staticmethod
    def _read(path: Path) -> str:
        text = path.read_text()
        path.unlink(missing_ok=True)
        return text


def _child(argv: list[str], out: Path, err: Path) -> None:
    code = 99
    with out.open("w") as stdout, err.open("w") as stderr:
        sys.stdout, sys.stderr = stdout, stderr
        try:
            code = drive(argv)
        except BaseException:
            traceback.print_exc()
        stdout.flush()
        stderr.flush()
    os._exit(code)


def start(engine: Engine, *args: str, pause_in: str | None = None,
          marker: Path | None = None) -> CliProcess:
    return CliProcess(engine, args, pause_in=pause_in, marker=marker)


def run_args(run: int, *extra: str, pause_s: float = PAUSE_S) -> list[str]:
    return ["run", "--as-of", str(as_of(run)), "--batch-size", str(BATCH_SIZE), "--pause",
            str(pause_s), "--json", *extra]


def wait_for(condition: Callable[[], bool], what: str, proc: CliProcess,
             timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc.poll() is not None:
            code, out, err = proc.finish()
            pytest.fail(f"the run ended (exit {code}) before {what} (seed {SEED}):\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what} (seed {SEED})")
        time.sleep(0.005)


def running_cursor(engine: Engine, run: int) -> str | None:
    runs = schema.billing_runs
    with engine.connect() as conn:
        row = conn.execute(sqlalchemy.select(runs.c.status, runs.c.cursor_order_id)
                           .where(runs.c.as_of == as_of(run))).first()
    if row is None or row.status != "running":
        return None
    return row.cursor_order_id  # type: ignore[no-any-return]


def run_statuses(engine: Engine) -> list[tuple[str, str]]:
    runs = schema.billing_runs
    with engine.connect() as conn:
        return sorted((row.run_id, row.status)
                      for row in conn.execute(sqlalchemy.select(runs.c.run_id, runs.c.status)))


def kill_after_cursor(engine: Engine, run: int, target: str) -> None:
    """Start the run, SIGKILL it once its cursor reached ``target``, leave it unfinished."""
    proc = start(engine, *run_args(run))
    wait_for(lambda: (running_cursor(engine, run) or "") >= target,
             f"run {run}'s cursor to pass {target}", proc)
    proc.kill()
    cursor = running_cursor(engine, run)
    assert cursor is not None, f"run {run} finished before the kill (seed {SEED})"
    assert cursor >= target


def existing(engine: Engine, transfer_ids: Sequence[str]) -> set[str]:
    with engine.connect() as conn:
        present = {str(t) for t in conn.execute(
            sqlalchemy.select(schema.ledger_transfers.c.transfer_id)).scalars()}
    return present & set(transfer_ids)


def settled_orders(engine: Engine) -> set[str]:
    table = schema.ledger_transfers
    with engine.connect() as conn:
        return set(conn.execute(sqlalchemy.select(table.c.order_id)
                                .where(table.c.code == "settle")).scalars())


def assert_same_books(world: BillingWorld, reference: dict[str, list[tuple[Any, ...]]]) -> None:
    assert world.reconcile().ok, world.reconcile().lines()
    books = snapshot(world.engine)
    for name, rows in reference.items():
        assert books[name] == rows, f"{name} differ from the uninterrupted run (seed {SEED})"
    assert not settled_orders(world.engine) & FAILED, "a failed charge was settled"
    assert settled_orders(world.engine), "nothing settled: the world tests nothing"


# -- the tests ----------------------------------------------------------------------------------

def test_killed_between_batches_then_rerun_gives_the_same_ledger(
        world: BillingWorld, reference: dict[str, list[tuple[Any, ...]]]) -> None:
    rng = random.Random(SEED)
    cursors = ORDERS[BATCH_SIZE - 1:-BATCH_SIZE:BATCH_SIZE]   # where a batch ends
    for run, facts in enumerate(FACTS):
        facts(world)
        kills = sorted(rng.sample(cursors, 2 if run == 1 else 1))
        for target in kills:
            kill_after_cursor(world.engine, run, target)
        summary = in_process(world.engine, run)
        assert summary.resumed
        assert summary.orders < len(ORDERS)     # the finished batches were not redone
    assert run_statuses(world.engine) == [(f"{day}.1", "finished") for day in
                                          ("2026-01-03", "2026-01-10", "2026-01-21")]
    assert_same_books(world, reference)


def test_killed_inside_a_batch_and_a_payout_transaction(
        world: BillingWorld, reference: dict[str, list[tuple[Any, ...]]],
        tmp_path: Path) -> None:
    rng = random.Random(SEED)
    for run, facts in enumerate(FACTS):
        facts(world)
        if run == 2:
            in_process(world.engine, run)
            continue
        where = (f"batch:{rng.randrange(2, len(ORDERS) // BATCH_SIZE + 1)}" if run == 0
                 else "payout:1")
        marker = tmp_path / f"in-transaction-{run}"
        before = running_cursor(world.engine, run)
        proc = start(world.engine, *run_args(run), pause_in=where, marker=marker)
        wait_for(marker.exists, f"run {run} to pause inside {where}", proc)
        written = json.loads(marker.read_text())
        cursor = running_cursor(world.engine, run)
        proc.kill()
        assert written, f"the {where} transaction wrote no transfers"
        # Rolled back whole: none of its transfers, and the cursor did not move.
        assert existing(world.engine, written) == set()
        assert running_cursor(world.engine, run) == cursor
        if run == 1:
            assert world.payouts() == {}
            assert before is None
            assert cursor == ORDERS[-1]
        assert in_process(world.engine, run).resumed
    assert_same_books(world, reference)


def test_two_runs_at_once_pay_once(world: BillingWorld,
                                   reference: dict[str, list[tuple[Any, ...]]]) -> None:
    pay(world)
    first, second = start(world.engine, *run_args(0)), start(world.engine, *run_args(0))
    results = sorted([first.finish(), second.finish()])
    assert [code for code, _, _ in results] == [0, 3], "\n".join(r[2] for r in results)
    assert "another billing run" in results[1][2]
    assert json.loads(results[0][1])["lines_accrued"] > 0

    receive_and_charge(world)
    working = start(world.engine, *run_args(1))
    wait_for(lambda: running_cursor(world.engine, 1) is not None, "the first run", working)
    waiting = start(world.engine, *run_args(1, "--wait", "60"))
    busy = start(world.engine, *run_args(1))
    assert busy.finish()[0] == 3
    code, out, err = working.finish()
    assert code == 0, err
    code, out, err = waiting.finish()
    assert code == 0, err
    late = json.loads(out)
    assert (late["run_id"], late["transfers"], late["payouts"]) == ("2026-01-10.2", 0, 0)

    refund_after_settlement(world)
    pair = [proc.finish() for proc in (start(world.engine, *run_args(2, "--wait", "60")),
                                       start(world.engine, *run_args(2, "--wait", "60")))]
    assert [code for code, _, _ in pair] == [0, 0], "\n".join(err for _, _, err in pair)
    assert_same_books(world, reference)


def test_a_failed_charge_is_never_settled(world: BillingWorld) -> None:
    world.paid_order("O1", [("I1", 10_000)])
    world.paid_order("O2", [("I1", 10_000)])
    world.paid_order("O3", [("I1", 10_000)])
    world.run(days=1)
    for order in ("O1", "O2", "O3"):
        world.receive(order)
    world.charge("O1")
    world.charge("O2", "failed")                   # O3's charge stays pending
    for days in (16, 30, 90):
        summary = world.run(days=days)
    assert settled_orders(world.engine) == {"O1"}
    assert summary.held == {"charge": 2}
    assert world.payouts() == {"platform": 200, "channel:C1": 500, "promoter:P1": 1300}
    assert world.reconcile().ok


TAMPERS = [
    # (case, SQL, the check that catches it)
    ("a pending commission deleted",
     "DELETE FROM ledger_transfers WHERE order_id = 'O003' AND code = 'commission'",  # failed
     "lines_vs_ledger"),
    ("a settlement's amount changed",
     "UPDATE ledger_transfers SET amount = amount + 1 WHERE order_id = 'O000' "
     "AND code = 'settle' AND credit_account_id = 'promoter:P1'", "resolutions"),
    ("an unfreeze deleted",
     "DELETE FROM ledger_transfers WHERE order_id = 'O010' AND code = 'unfreeze'",
     "frozen_vs_pending"),
    ("a commission line changed",
     "UPDATE commission_lines SET commission_amount = commission_amount - 5 "
     "WHERE order_id = 'O008' AND item_id = 'I0'", "lines_vs_ledger"),
    ("a freeze's amount changed",
     "UPDATE ledger_transfers SET amount = amount * 2 WHERE order_id = 'O012' "
     "AND code = 'freeze'", "frozen_vs_pending"),
]


@pytest.fixture
def cps_billing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                ledger_url: str) -> Callable[..., tuple[int, str, str]]:  # noqa: F811
    """``cps-billing ARGS`` in this process: (exit code, stdout, stderr)."""
    from billing_batch import cli

    try:
        cli.build_parser()
    except ImportError:  # an optional command group is not there yet: run without it
        monkeypatch.setattr(cli, "_mount_optional", lambda commands: None)

    def call(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli.main(["--database-url", ledger_url, *args])
        out, err = capsys.readouterr()
        return code, out, err

    return call


@pytest.mark.parametrize(("case", "sql", "check"), TAMPERS, ids=[t[0] for t in TAMPERS])
def test_a_tampered_ledger_is_reported_and_stops_the_run(
        world: BillingWorld, cps_billing: Callable[..., tuple[int, str, str]], case: str,
        sql: str, check: str) -> None:
    for run, facts in enumerate(FACTS[:2]):
        facts(world)
        in_process(world.engine, run)
    assert cps_billing("reconcile")[0] == 0
    order = sql.split("order_id = '")[1][:4]
    with world.engine.begin() as conn:
        assert conn.execute(sqlalchemy.text(sql)).rowcount >= 1
    code, out, err = cps_billing("reconcile")
    assert code == 1, (out, err)
    assert "MISMATCH" in out
    assert any(line.strip().startswith(f"{check}:") and order in line
               for line in out.splitlines()), out
    code, out, err = cps_billing("reconcile", "--json")
    report = json.loads(out)
    assert code == 1
    assert not report["ok"]
    assert any(f["check"] == check and order in f["sample"] for f in report["findings"])

    before, runs = snapshot(world.engine), run_statuses(world.engine)
    refund_after_settlement(world)
    code, out, err = cps_billing(*run_args(2))
    assert code == 1, (out, err)
    assert "do not balance" in err
    assert order in err
    assert snapshot(world.engine) == before       # nothing written, not even a run
    assert run_statuses(world.engine) == runs


if __name__ == "__main__":
    sys.exit(drive(sys.argv[1:]))
