"""cps-billing run / reconcile / runs from the command line, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_run_metrics_file_reports_success_then_a_stopped_run(
        world: BillingWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cps_billing.prom"
    assert cli.main(["--database-url", _url(world), "run", "--as-of", "2026-01-02",
                     "--metrics-file", str(path)]) == 0
    text = path.read_text()
    assert "cps_billing_last_run_success 1.0" in text
    assert "cps_billing_last_run_lines_accrued 1.0" in text
    assert 'cps_billing_last_run_amount_minor{code="freeze"} 2000.0' in text
    with world.engine.begin() as conn:
        conn.execute(sqlalchemy.text("DELETE FROM ledger_transfers WHERE code = 'freeze'"))
    assert cli.main(["--database-url", _url(world), "run", "--as-of", "2026-01-03",
                     "--metrics-file", str(path)]) == 1
    text = path.read_text()
    assert "cps_billing_last_run_success 0.0" in text
    assert "cps_billing_reconciliation_ok 0.0" in text


def test_charge_metrics_read_the_ledger(world: BillingWorld) -> None:
    from billing_batch.metrics import LedgerCollector

    world.run(days=1)                         # O1 accrued: one pending charge, one outbox row
    families = {family.name: family for family in LedgerCollector(world.engine).collect()}
    charges = {sample.labels["status"]: sample.value for sample in families["cps_charges"].samples}
    assert charges == {"pending": 1, "charged": 0, "failed": 0}
    assert families["cps_outbox_backlog"].samples[0].value == 1


def test_reconcile_catches_a_deleted_settlement_that_was_paid_out(
        world: BillingWorld, capsys: pytest.CaptureFixture[str]) -> None:
    world.run(days=1)
    world.receive("O1")
    world.charge("O1")
    world.run(days=17)                                   # settled and paid out
    with world.engine.begin() as conn:
        conn.execute(sqlalchemy.text("DELETE FROM ledger_transfers WHERE code = 'settle' "
                                     "AND credit_account_id = 'promoter:P1'"))
    assert cli.main(["--database-url", _url(world), "reconcile", "--json"]) == 1
    failed = {f["check"]: f for f in json.loads(capsys.readouterr().out)["findings"]}
    assert failed["payouts_within_settled"]["sample"] == ["promoter:P1"]
    assert failed["payouts_within_settled"]["amount_minor"] == 1300
