"""The billing run's textfile metrics: what node_exporter's textfile collector would serve."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from billing_batch.metrics import write_run_metrics


def samples(path: Path) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def test_a_finished_run_writes_its_figures(tmp_path: Path) -> None:
    path = tmp_path / "textfile" / "cps_billing.prom"
    summary = {"orders": 3, "lines_accrued": 4, "payouts": 2, "payout_minor": 1000,
               "amounts": {"freeze": 2000, "settle": 1000}, "held": {"charge": 1}}
    write_run_metrics(path, summary=summary, success=True, reconciliation_ok=True,
                      duration_s=1.5)
    got = samples(path)
    assert got["cps_billing_last_run_success"] == 1
    assert got["cps_billing_reconciliation_ok"] == 1
    assert got["cps_billing_last_run_duration_seconds"] == 1.5
    assert got["cps_billing_last_run_orders"] == 3
    assert got["cps_billing_last_run_payout_minor"] == 1000
    assert got["cps_billing_last_run_amount_minor{code=settle}"] == 1000
    assert got["cps_billing_last_run_amount_minor{code=clawback}"] == 0
    assert got["cps_billing_last_run_held_orders{reason=charge}"] == 1
    assert got["cps_billing_last_run_timestamp_seconds"] > 1.7e9
    assert not list(path.parent.glob("*.tmp*"))  # written through a renamed temporary file


def test_a_run_stopped_by_reconciliation_says_so(tmp_path: Path) -> None:
    path = tmp_path / "cps_billing.prom"
    write_run_metrics(path, summary=None, success=False, reconciliation_ok=False,
                      duration_s=0.2)
    got = samples(path)
    assert got["cps_billing_last_run_success"] == 0
    assert got["cps_billing_reconciliation_ok"] == 0
    assert "cps_billing_last_run_orders" not in got
