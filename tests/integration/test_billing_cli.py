"""cps-billing run / reconcile / runs from the command line, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest
import sqlalchemy
from sqlalchemy import Engine

from billing_batch import cli
from billing_batch.run import RUN_LOCK_KEY
from ledger_db.locks import DatabaseLock
from tests.integration.billing_world import BillingWorld
from tests.integration.db import ledger_engine, ledger_url  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration


@pytest.fixture
def world(ledger_engine: Engine) -> BillingWorld:  # noqa: F811
    world = BillingWorld(ledger_engine)
    world.standard_rates()
    world.paid_order("O1", [("I1", 10_000)])
    return world


def _url(world: BillingWorld) -> str:
    return world.engine.url.render_as_string(hide_password=False)


def test_run_prints_a_summary_and_plain_progress(world: BillingWorld,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--database-url", _url(world), "run", "--as-of", "2026-01-02"]) == 0
    out, err = capsys.readouterr()
    assert "billing run 2026-01-02.1 as of 2026-01-02T00:00:00Z: 1 orders" in out
    assert "1 accrued" in out
    assert "frozen 2,000" in out
    assert "billing: orders 1/1 (100%)" in err          # not a terminal: plain lines
    assert cli.main(["--database-url", _url(world), "run", "--as-of", "2026-01-02",
                     "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["run_id"] == "2026-01-02.2"
    assert again["transfers"] == 0
    assert cli.main(["--database-url", _url(world), "runs", "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [run["status"] for run in runs] == ["finished", "finished"]


def test_reconcile_passes_then_reports_a_tampered_amount(
        world: BillingWorld, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--database-url", _url(world), "run", "--as-of", "2026-01-02"]) == 0
    capsys.readouterr()
    assert cli.main(["--database-url", _url(world), "reconcile"]) == 0
    assert "reconciliation check: ok" in capsys.readouterr().out
    with world.engine.begin() as conn:
        conn.execute(sqlalchemy.text(
            "UPDATE ledger_transfers SET amount = amount + 1 "
            "WHERE code = 'commission' AND credit_account_id = 'promoter:P1'"))
    assert cli.main(["--database-url", _url(world), "reconcile", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    failed = {finding["check"]: finding for finding in report["findings"]}
    assert failed["lines_vs_ledger"]["sample"] == ["O1"]
    assert failed["lines_vs_ledger"]["amount_minor"] == -1
    # A run refuses to start on a failed pre-check.
    assert cli.main(["--database-url", _url(world), "run", "--as-of", "2026-01-03"]) == 1
    assert "the books do not balance" in capsys.readouterr().err


def test_a_busy_run_lock_exits_3(world: BillingWorld, capsys: pytest.CaptureFixture[str]) -> None:
    holder = DatabaseLock(world.engine, "billing-run", RUN_LOCK_KEY)
    assert holder.try_acquire()
    try:
        assert cli.main(["--database-url", _url(world), "run", "--as-of", "2026-01-02"]) == 3
    finally:
        holder.release()
    assert "another billing run is in progress" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "--as-of", "yesterday"], "--as-of: 'yesterday' is neither an ISO 8601 date"),
    (["run", "--as-of", "2026-01-02", "--batch-size", "0"], "--batch-size: must be positive"),
    (["statements", "--from", "2026-02-01", "--to", "2026-01-01"], "--to must be after --from"),
])
def test_bad_input_is_a_message_and_exit_2(world: BillingWorld, argv: list[str], message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--database-url", _url(world), *argv]) == 2
    assert message in capsys.readouterr().err
