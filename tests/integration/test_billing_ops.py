"""The billing alerts (ops/prometheus/billing-alerts.yml) query what billing_batch.metrics
exports, are documented in the runbook, pass ``promtool check rules`` and fire exactly in
their scenario (``promtool test rules``)."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from billing_batch import metrics
from tests.integration.test_attribution_dashboard import github_anchors
from tests.integration.test_dashboard_metrics import needs

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ALERTS_PATH = ROOT / "ops" / "prometheus" / "billing-alerts.yml"
PROMETHEUS_PATH = ROOT / "ops" / "prometheus" / "prometheus.yml"
RUNBOOK_PATH = ROOT / "ops" / "README.md"
RULES: list[dict[str, Any]] = [
    rule for group in yaml.safe_load(ALERTS_PATH.read_text())["groups"]
    for rule in group["rules"]]
JOBS = {"cps_billing": "cps-billing-textfile", "cps_charge": "cps-charges",
        "cps_charges": "cps-charges"}


def exported_names(tmp_path: Path) -> set[str]:
    path = tmp_path / "run.prom"
    metrics.write_run_metrics(path, summary={"orders": 1}, success=True,
                              reconciliation_ok=True, duration_s=1.0)
    text = path.read_text() + generate_latest(metrics.CHARGE_REGISTRY).decode()
    names = set(re.findall(r"^# TYPE (\w+) ", text, re.MULTILINE))
    names |= {name + "_total" for name in names}
    return names | {"cps_charges", "cps_outbox_backlog", "up"}


def test_rules_query_only_exported_metrics_of_their_job(tmp_path: Path) -> None:
    exported = exported_names(tmp_path)
    for rule in RULES:
        for name, labels in re.findall(r"\b([a-z_]+)\{([^}]*)\}", rule["expr"]):
            assert name in exported, f"{rule['alert']}: {name} is not exported"
            if name != "up":
                prefix = "_".join(name.split("_")[:2])
                assert f'job="{JOBS[prefix]}"' in labels, f"{rule['alert']}: {name}"


def test_rules_are_documented_and_scraped() -> None:
    runbook = RUNBOOK_PATH.read_text()
    section = runbook[runbook.index("## Billing alerts"):]
    anchors = github_anchors(runbook)
    for rule in RULES:
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"].strip()
        path, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert path == "ops/README.md"
        assert anchor == rule["alert"].lower()
        assert anchor in anchors
        assert f"### {rule['alert']}\n" in section
    config = yaml.safe_load(PROMETHEUS_PATH.read_text())
    assert "billing-alerts.yml" in config["rule_files"]
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {"cps-charges", "cps-billing-textfile"} <= jobs


def test_promtool_accepts_the_rules() -> None:
    promtool = needs("promtool")
    run = subprocess.run([promtool, "check", "rules", str(ALERTS_PATH)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stdout + run.stderr


@dataclass(frozen=True)
class Scenario:
    series: dict[str, str]
    firing: dict[str, list[str]]  # eval time -> the alerts firing then


def fired(name: str) -> str:
    severity = {rule["alert"]: rule["labels"]["severity"] for rule in RULES}[name]
    return f'ALERTS{{alertname="{name}",alertstate="firing",severity="{severity}"}}'


T = 'job="cps-billing-textfile",instance="batch"'
C = 'job="cps-charges",instance="charges"'
HEALTHY_CHARGES = {f'up{{{C}}}': "1x120", f'cps_charges{{{C},status="failed"}}': "0x120",
                   f'cps_charge_dead_letters_total{{{C}}}': "0x120"}
SCENARIOS = {
    "a healthy day": Scenario(
        {f"cps_billing_last_run_timestamp_seconds{{{T}}}": "0+60x120",
         f"cps_billing_last_run_success{{{T}}}": "1x120",
         f"cps_billing_reconciliation_ok{{{T}}}": "1x120", **HEALTHY_CHARGES},
        {"30m": [], "119m": []}),
    "a run stopped on unbalanced books": Scenario(
        {f"cps_billing_last_run_timestamp_seconds{{{T}}}": "0+60x120",
         f"cps_billing_last_run_success{{{T}}}": "1x30 0x90",
         f"cps_billing_reconciliation_ok{{{T}}}": "1x30 0x90", **HEALTHY_CHARGES},
        {"20m": [], "40m": [fired("CpsBillingBooksUnbalanced"),
                            fired("CpsBillingRunFailed")]}),
    "no run for more than a day": Scenario(
        {f"cps_billing_last_run_timestamp_seconds{{{T}}}": "0x1700",
         f"cps_billing_last_run_success{{{T}}}": "1x1700",
         f"cps_billing_reconciliation_ok{{{T}}}": "1x1700",
         f'up{{{C}}}': "1x1700", f'cps_charges{{{C},status="failed"}}': "0x1700",
         f'cps_charge_dead_letters_total{{{C}}}': "0x1700"},
        {"25h": [], "1590m": [fired("CpsBillingRunMissing")]}),
    "failed charges and dead letters, then the service gone": Scenario(
        {f"cps_billing_last_run_timestamp_seconds{{{T}}}": "0+60x120",
         f"cps_billing_last_run_success{{{T}}}": "1x120",
         f"cps_billing_reconciliation_ok{{{T}}}": "1x120",
         f'up{{{C}}}': "1x60 _x60", f'cps_charges{{{C},status="failed"}}': "0x10 2x50",
         f'cps_charge_dead_letters_total{{{C}}}': "0x20 1x40"},
        {"8m": [], "18m": [fired("CpsChargesFailed")],
         "22m": [fired("CpsChargesFailed"), fired("CpsChargeResultsDeadLettered")],
         "90m": [fired("CpsChargeServiceAbsent")]}),
}


def test_every_alert_has_a_firing_scenario() -> None:
    names = {re.search(r'alertname="(\w+)"', alert).group(1)  # type: ignore[union-attr]
             for scenario in SCENARIOS.values() for alerts in scenario.firing.values()
             for alert in alerts}
    assert names == {rule["alert"] for rule in RULES}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_alert_fires_exactly_in_its_scenario(name: str, tmp_path: Path) -> None:
    promtool = needs("promtool")
    scenario = SCENARIOS[name]
    spec = {"rule_files": [str(ALERTS_PATH)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in scenario.series.items()],
        "promql_expr_test": [
            {"expr": 'ALERTS{alertstate="firing"}', "eval_time": at,
             "exp_samples": [{"labels": a, "value": 1} for a in alerts]}
            for at, alerts in scenario.firing.items()]}]}
    path = tmp_path / "billing_alerts_test.yml"
    path.write_text(yaml.safe_dump(spec))
    run = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
