"""python -m bench.billing, tiny, on SQLite and PostgreSQL: it runs, accounts, reports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.integration.db import _postgres_admin

pytestmark = pytest.mark.integration


def test_billing_bench_runs_on_both_databases(tmp_path: Path) -> None:
    _postgres_admin().dispose()  # no server: skipped (a failure under CI=true)
    done = subprocess.run(
        [sys.executable, "-m", "bench.billing", "--lines", "2000", "--shops", "2",
         "--database", "both", "--no-record", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = orjson.loads((tmp_path / "results.json").read_bytes())
    assert [r["database"] for r in results["databases"]] == ["postgresql", "sqlite"]
    for r in results["databases"]:
        assert r["lines"] == 2000
        accrual, settlement = r["accrual"], r["settlement"]
        assert accrual["written"]["commission_lines"] == 2000
        assert accrual["summary"]["charges_requested"] == r["marked"]["charged"] > 0
        assert settlement["summary"]["amounts"]["settle"] > 0
        assert settlement["written"]["payouts"] > 0
        ledger_rows = (accrual["written"]["ledger_transfers"]
                       + settlement["written"]["ledger_transfers"])
        assert r["baseline"]["rows"] == ledger_rows
        assert r["baseline"]["seconds"] > 0
    assert (tmp_path / "billing.png").stat().st_size > 10_000
    assert "| **total** |" in done.stdout


def test_bad_arguments_are_refused_without_a_traceback() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.billing", "--lines", "0"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "--lines must be at least 1" in done.stderr
    assert "Traceback" not in done.stderr
