"""cps-bench end to end, tiny: it measures, counts every click back out of Kafka, reports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.integration


def test_bench_harness_runs_and_accounts_for_every_click(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "-m", "bench.harness", "--runs", "1", "--duration", "2", "--warmup",
         "1", "--curve", "25", "--curve-duration", "2", "--links", "50", "--promoters", "5",
         "--no-record", "--out", str(out)],
        capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = orjson.loads((out / "results.json").read_bytes())
    assert set(results["targets"]) == {"baseline", "edge"}
    for target in results["targets"].values():
        [run] = target["runs"]
        assert run["rps"] > 100
        assert run["errors"] == 0
        assert run["p50_ms"] <= run["p99_ms"] <= run["max_ms"]
        assert run["cpu_percent"] > 0
    assert results["clicks"]["ok"] is True
    served = results["clicks"]["served"]
    assert served["valid"] == results["clicks"]["kafka_distinct_valid"] > 0
    assert {p["target"] for p in results["curve"]} == {"edge", "baseline"}
    assert 0 < results["ratio_median"] < 1.5
    assert (out / "latency.png").stat().st_size > 10_000
    assert "Edge / baseline" in done.stdout
