"""The SRE dashboard and alerts (ops/) query only what a real edge exports, correctly.

* Static checks (no server): the Grafana JSON is importable anywhere (datasource
  variable, unique ids, laid-out panels, every target has a query), every
  metric of ``edge/telemetry.py`` has a panel, and the PromQL applies ``rate``
  to counters, ``deriv`` to gauges and ``histogram_quantile`` to bucket rates
  summed by ``le``.
* A real edge (Tansu + Redis from the ``stack`` fixture) answers requests of
  every verdict; its /metrics, read with prometheus_client's parser, must
  export every metric name and every label value the dashboard and the alerts
  use, with the counts the panels would show.
* With ``promtool`` on PATH: the config and rules pass ``promtool check``, and
  ``promtool test rules`` shows each alert firing exactly in its scenario.
* With ``prometheus`` on PATH: a real Prometheus scrapes a real edge with the
  shipped config and answers every dashboard query with data.
  (Debian: ``apt-get install prometheus`` provides both binaries.)
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import math
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from contracts.clicks import Verdict
from contracts.keys import generate_ring
from contracts.links import mint_link
from devstack.processes import ManagedProcess, free_port
from devstack.stack import LocalStack
from edge.telemetry import REGISTRY
from tests.integration.edge_harness import (
    TARGET,
    EdgeProcess,
    Keys,
    get_request,
    mint,
    path_of,
    raw_request,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_PATH = ROOT / "ops" / "grafana" / "cps-edge-dashboard.json"
PROMETHEUS_PATH = ROOT / "ops" / "prometheus" / "prometheus.yml"
ALERTS_PATH = ROOT / "ops" / "prometheus" / "alerts.yml"

DASHBOARD: dict[str, Any] = json.loads(DASHBOARD_PATH.read_text())
ALERTS: dict[str, Any] = yaml.safe_load(ALERTS_PATH.read_text())
PROMETHEUS: dict[str, Any] = yaml.safe_load(PROMETHEUS_PATH.read_text())

JOB = "cps-edge"
DS_UID = "${datasource}"
# Labels Prometheus attaches to every scraped series; the edge itself never exports them.
TARGET_LABELS = {"job", "instance"}
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"

METRIC = re.compile(r"\bcps_[a-z0-9_]+\b")
SELECTOR = re.compile(r"\b(cps_[a-z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
ALTERNATION = re.compile(r"[a-z0-9_]+(?:\|[a-z0-9_]+)*")
COUNTER_FUNCS = re.compile(r"\b(rate|irate|increase)\s*\(\s*(cps_[a-z0-9_]+)")
GAUGE_FUNCS = re.compile(r"\b(deriv|delta|idelta|predict_linear)\s*\(\s*(cps_[a-z0-9_]+)")
QUANTILE = re.compile(
    r"histogram_quantile\(\s*([0-9.]+)\s*,\s*sum\s+by\s*\(([^)]*)\)\s*"
    r"\(\s*rate\(\s*(cps_[a-z0-9_]+)\s*\{[^}]*\}\s*\[[^\]]+\]\s*\)\s*\)\s*\)")
GROUPING = re.compile(r"\bby\s*\(([^)]*)\)\s*\(")


# -- reading the ops files -------------------------------------------------------------

class OpsFiles:
    """Reading one dashboard and its alert rules (the edge's here; the attribution
    service's in test_attribution_dashboard.py): panels, PromQL, rules."""

    def __init__(self, dashboard: dict[str, Any], alerts: dict[str, Any]) -> None:
        self.dashboard = dashboard
        self.alerts = alerts

    def panels(self) -> list[dict[str, Any]]:
        """Every panel, rows included, with the panels of collapsed rows flattened in."""
        out: list[dict[str, Any]] = []
        for p in self.dashboard["panels"]:
            out.append(p)
            out.extend(p.get("panels", []))
        return out

    def query_panels(self) -> list[dict[str, Any]]:
        return [p for p in self.panels() if p["type"] != "row"]

    def panel(self, title: str) -> dict[str, Any]:
        (found,) = [p for p in self.query_panels() if p["title"] == title]
        return found

    def dashboard_exprs(self) -> list[tuple[str, str]]:
        """(where, PromQL) of every panel target and every query variable."""
        out = [(f"panel {p['title']!r}", e) for p in self.query_panels() for e in exprs_of(p)]
        out += [(f"variable ${v['name']}", v["definition"])
                for v in self.dashboard["templating"]["list"] if v["type"] == "query"]
        return out

    def alert_rules(self) -> list[dict[str, Any]]:
        return [r for g in self.alerts["groups"] for r in g["rules"]]

    def alert_exprs(self) -> list[tuple[str, str]]:
        return [(f"alert {r['alert']}", r["expr"]) for r in self.alert_rules()]

    def all_exprs(self) -> list[tuple[str, str]]:
        return self.dashboard_exprs() + self.alert_exprs()


def exprs_of(p: dict[str, Any]) -> list[str]:
    return [t["expr"] for t in p["targets"]]


_OPS = OpsFiles(DASHBOARD, ALERTS)
panels, query_panels, panel = _OPS.panels, _OPS.query_panels, _OPS.panel
dashboard_exprs, alert_rules, alert_exprs = _OPS.dashboard_exprs, _OPS.alert_rules, _OPS.alert_exprs
all_exprs = _OPS.all_exprs


def grafana_substituted(expr: str, job: str, instance: str) -> str:
    """A dashboard query as Grafana sends it with $job/$instance chosen and a 5m range."""
    return expr.replace("$job", job).replace("$instance", instance).replace("$__range", "5m")


# -- what an exposition exports ----------------------------------------------------------

@dataclass
class Exported:
    """Sample names, family types and label values of one /metrics text."""

    kind: dict[str, str] = field(default_factory=dict)          # sample name -> family type
    family: dict[str, str] = field(default_factory=dict)        # sample name -> family name
    labels: dict[str, set[str]] = field(default_factory=dict)   # sample name -> label names
    values: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    samples: dict[str, float] = field(default_factory=dict)     # 'name{k="v"}' -> value

    @classmethod
    def parse(cls, text: str) -> Exported:
        out = cls()
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out.kind[s.name] = fam.type
                out.family[s.name] = fam.name
                out.labels.setdefault(s.name, set()).update(s.labels)
                for k, v in s.labels.items():
                    out.values.setdefault((s.name, k), set()).add(v)
                key = s.name + "".join(f'{{{k}="{v}"}}' for k, v in sorted(s.labels.items()))
                out.samples[key] = s.value
        return out

    def families(self) -> dict[str, str]:
        return {self.family[s]: self.kind[s] for s in self.kind}


def registry_exports() -> Exported:
    """What this code version exports, from the registry itself (no server)."""
    return Exported.parse(REGISTRY.render().decode())


def referenced(exprs: list[tuple[str, str]]) -> dict[str, list[str]]:
    """cps_* metric name -> where it is used."""
    out: dict[str, list[str]] = collections.defaultdict(list)
    for where, expr in exprs:
        for name in METRIC.findall(expr):
            out[name].append(where)
    return dict(out)


def balanced(expr: str, start: int) -> str:
    """The text inside the parenthesis that opens at ``expr[start]``."""
    depth = 0
    for i in range(start, len(expr)):
        depth += {"(": 1, ")": -1}.get(expr[i], 0)
        if depth == 0:
            return expr[start + 1:i]
    raise AssertionError(f"unbalanced parentheses in {expr!r}")


def label_problems(exprs: list[tuple[str, str]], exp: Exported) -> list[str]:
    """Every label matcher / grouping label that names something the exposition lacks."""
    problems = []
    for where, expr in exprs:
        for name, body in SELECTOR.findall(expr):
            for label, op, value in MATCHER.findall(body):
                if label in TARGET_LABELS or "$" in value:
                    continue
                if label not in exp.labels.get(name, set()):
                    problems.append(f"{where}: {name} has no label {label!r}")
                    continue
                wanted = value.split("|") if op in ("=~", "!~") else [value]
                if op in ("=~", "!~") and not ALTERNATION.fullmatch(value):
                    problems.append(f"{where}: {label}{op}{value!r} is not a plain alternation")
                    continue
                for v in wanted:
                    if v not in exp.values[(name, label)]:
                        problems.append(f"{where}: {name} never has {label}={v!r}")
        for m in GROUPING.finditer(expr):
            grouped = [x.strip() for x in m.group(1).split(",") if x.strip()]
            inner = balanced(expr, m.end() - 1)
            for name in METRIC.findall(inner):
                for label in grouped:
                    if label not in TARGET_LABELS and label not in exp.labels.get(name, set()):
                        problems.append(f"{where}: grouping by {label!r}, absent from {name}")
    return problems


# -- static: the Grafana dashboard ---------------------------------------------------------

def test_dashboard_imports_anywhere_through_a_prometheus_datasource_variable() -> None:
    assert DASHBOARD["schemaVersion"] >= 39
    assert DASHBOARD["title"]
    assert DASHBOARD["uid"]
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource"
    assert ds["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": DS_UID}
        assert variables[name]["includeAll"] is True
    # No datasource is hard-wired: every panel and every target uses the variable.
    for p in query_panels():
        assert p["datasource"] == {"type": "prometheus", "uid": DS_UID}, p["title"]
        for t in p["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": DS_UID}, p["title"]


def test_every_panel_has_an_id_a_place_a_title_a_unit_and_a_query() -> None:
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    cells: dict[tuple[int, int], str] = {}
    for p in panels():
        grid = p["gridPos"]
        assert {"h", "w", "x", "y"} <= grid.keys(), p["title"]
        assert grid["w"] > 0, p["title"]
        assert grid["h"] > 0, p["title"]
        assert grid["x"] + grid["w"] <= 24, p["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
    for p in query_panels():
        assert p["type"] in ("timeseries", "stat"), p["title"]
        assert p["title"].strip(), p["id"]
        assert p["description"].strip(), p["title"]
        assert p["fieldConfig"]["defaults"]["unit"], p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip(), p["title"]
            assert t.get("legendFormat"), p["title"]


def test_every_query_is_filtered_by_the_job_and_instance_variables() -> None:
    for where, expr in dashboard_exprs():
        if where.startswith("variable"):
            continue
        for name, body in SELECTOR.findall(expr):
            assert 'job=~"$job"' in body, (where, name)
            assert 'instance=~"$instance"' in body, (where, name)
        assert len(SELECTOR.findall(expr)) == len(METRIC.findall(expr)), \
            f"{where}: a metric without a selector escapes the variables: {expr}"


def test_every_exported_metric_has_a_panel() -> None:
    exp = registry_exports()
    on_dashboard = {exp.family[n] for n in referenced(dashboard_exprs()) if n in exp.family}
    missing = set(exp.families()) - on_dashboard
    assert not missing, f"metrics of edge/telemetry.py on no panel: {sorted(missing)}"


def test_promql_applies_each_function_to_the_right_metric_type() -> None:
    exp = registry_exports()
    for where, expr in all_exprs():
        for func, name in COUNTER_FUNCS.findall(expr):
            assert exp.kind.get(name) in ("counter", "histogram"), \
                f"{where}: {func}() of {name}, a {exp.kind.get(name)}"
        for func, name in GAUGE_FUNCS.findall(expr):
            assert exp.kind.get(name) == "gauge", f"{where}: {func}() of {name}"
        quantiles = QUANTILE.findall(expr)
        for q, by, name in quantiles:
            assert 0 < float(q) < 1, where
            assert name.endswith("_bucket"), where
            assert exp.kind.get(name) == "histogram", where
            assert "le" in [x.strip() for x in by.split(",")], f"{where}: not summed by le"
        buckets = [n for n in METRIC.findall(expr) if n.endswith("_bucket")]
        assert len(buckets) == len(quantiles), \
            f"{where}: a _bucket series used outside histogram_quantile(sum by (le) (rate()))"
        for name in METRIC.findall(expr):
            if exp.kind.get(name) == "histogram" and not name.endswith("_bucket"):
                assert re.search(rf"rate\(\s*{name}\b", expr), f"{where}: raw {name}"


def test_latency_panel_shows_four_percentiles_against_a_2ms_line() -> None:
    p = panel("Redirect latency percentiles")
    quantiles = {float(q) for e in exprs_of(p) for q, _, _ in QUANTILE.findall(e)}
    assert quantiles == {0.5, 0.9, 0.99, 0.999}
    assert all("[1m]" in e for e in exprs_of(p))
    defaults = p["fieldConfig"]["defaults"]
    assert defaults["unit"] == "s"
    assert defaults["custom"]["thresholdsStyle"]["mode"] in ("line", "dashed", "line+area")
    assert [s["value"] for s in defaults["thresholds"]["steps"]] == [None, 0.002]


def test_kafka_latency_panel_shows_p50_and_p99() -> None:
    p = panel("Kafka delivery latency")
    found = {(float(q), n) for e in exprs_of(p) for q, _, n in QUANTILE.findall(e)}
    assert found == {(0.5, "cps_edge_kafka_delivery_seconds_bucket"),
                     (0.99, "cps_edge_kafka_delivery_seconds_bucket")}


def test_verdict_panels_stack_rates_and_cover_every_non_valid_verdict() -> None:
    by_verdict = panel("Redirects per second by verdict")
    assert by_verdict["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    assert exprs_of(by_verdict) == [
        'sum by (verdict) (rate(cps_edge_requests_total{job=~"$job",instance=~"$instance"}[1m]))']

    share = panel("Non-valid verdicts (% of redirects)")
    assert share["fieldConfig"]["defaults"]["unit"] == "percent"
    broken_down = set()
    for e in exprs_of(share):
        assert e.startswith("100 * ")
        for _, body in SELECTOR.findall(e):
            for label, op, value in MATCHER.findall(body):
                if label == "verdict" and op == "=~":
                    broken_down.update(value.split("|"))
    # A verdict added to contracts.clicks must show up in the breakdown too.
    assert broken_down == {v.value for v in Verdict} - {"valid"}


def test_top_row_is_stats_and_dropped_clicks_turn_red_above_zero() -> None:
    top = sorted((p for p in query_panels() if p["gridPos"]["y"] <= 1),
                 key=lambda p: p["gridPos"]["x"])
    assert [p["type"] for p in top] == ["stat"] * 4
    joined = " ".join(e for p in top for e in exprs_of(p))
    for name in ("cps_edge_requests_total", "cps_edge_request_duration_seconds_bucket",
                 "cps_edge_fallback_pending_records", "cps_edge_clicks_dropped_total"):
        assert name in joined
    dropped = [p for p in query_panels() if p["type"] == "stat"
               and any("cps_edge_clicks_dropped_total" in e for e in exprs_of(p))]
    assert len(dropped) == 2  # the top row's, and the delivery section's
    for p in dropped:
        steps = p["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps[0] == {"color": "green", "value": None}, p["title"]
        assert steps[-1]["color"] == "red", p["title"]
        assert 0 < steps[-1]["value"] <= 1, p["title"]


def test_fallback_workers_panel_queries_both_modes_and_live_workers() -> None:
    p = panel("Workers by delivery mode")
    joined = " ".join(exprs_of(p))
    assert 'mode="fallback"' in joined
    assert 'mode="kafka"' in joined
    assert "cps_edge_workers" in joined
    assert "rate(" not in joined  # gauges only


# -- static: Prometheus config and alert rules -------------------------------------------

def test_prometheus_config_scrapes_the_edge_and_loads_the_alerts() -> None:
    # The first job is the edge's (the real-Prometheus test below takes it); the
    # attribution service's job follows (tests/integration/test_attribution_dashboard.py).
    job = PROMETHEUS["scrape_configs"][0]
    assert job["job_name"] == JOB
    assert job["metrics_path"] == "/metrics"
    assert job["scrape_interval"] == "5s"
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:8000"]
    assert PROMETHEUS["rule_files"][0] == "alerts.yml"
    assert (PROMETHEUS_PATH.parent / "alerts.yml").is_file()
    text = PROMETHEUS_PATH.read_text()
    assert "scrape each host" in text
    assert "ONCE" in text


REQUIRED_ALERTS = {
    "CpsEdgeClicksDropped": "critical",
    "CpsEdgeFallbackInUse": "warning",
    "CpsEdgeFallbackBacklogGrowing": "warning",
    "CpsEdgeRedirectLatencyHigh": "warning",
    "CpsEdgeDeliveryErrors": "warning",
    "CpsEdgeNoLiveWorkers": "critical",
}


def test_alert_rules_are_complete_and_documented() -> None:
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    severities = {r["alert"]: r["labels"]["severity"] for r in rules}
    assert REQUIRED_ALERTS.items() <= severities.items()
    assert set(severities.values()) <= {"warning", "critical"}
    runbook = (ROOT / "ops" / "README.md").read_text()
    for r in rules:
        assert r["annotations"]["summary"].strip(), r["alert"]
        assert r["annotations"]["description"].strip(), r["alert"]
        assert r["alert"] in runbook, f"{r['alert']} has no runbook entry in ops/README.md"
        for name, body in SELECTOR.findall(r["expr"]):
            assert f'job="{JOB}"' in body, f"{r['alert']}: {name} not limited to job {JOB}"
    by_name = {r["alert"]: r for r in rules}
    assert by_name["CpsEdgeFallbackInUse"]["for"] == "5m"
    assert by_name["CpsEdgeRedirectLatencyHigh"]["for"] == "10m"
    assert by_name["CpsEdgeFallbackBacklogGrowing"]["for"] == "10m"
    assert "deriv(" in by_name["CpsEdgeFallbackBacklogGrowing"]["expr"]
    assert "> 0.002" in by_name["CpsEdgeRedirectLatencyHigh"]["expr"]
    assert "for" not in by_name["CpsEdgeClicksDropped"]  # critical at the first drop


# -- promtool: syntax, and when each alert fires ------------------------------------------

def needs(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} not on PATH (Debian: apt-get install prometheus)")
    return path


def test_promtool_accepts_the_config_and_the_rules() -> None:
    promtool = needs("promtool")
    for args in (["check", "config", str(PROMETHEUS_PATH)], ["check", "rules", str(ALERTS_PATH)]):
        run = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60,
                             check=False)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "SUCCESS" in run.stdout + run.stderr


def edge_series(instance: str, series: dict[str, str] | None = None) -> dict[str, str]:
    """Input series of one scraped edge host, healthy unless ``series`` says otherwise.

    ``series`` maps ``name`` or ``name{label="value"}`` to promtool values (one a minute);
    the host's job and instance labels are added.
    """
    labels = f'job="{JOB}",instance="{instance}"'
    out = {f"up{{{labels}}}": "1x30", f"cps_edge_workers{{{labels}}}": "2x30"}
    for key, values in (series or {}).items():
        name, _, extra = key.partition("{")
        out[f"{name}{{{labels}{',' + extra.rstrip('}') if extra else ''}}}"] = values
    return out


def slow_or_fast(instance: str, slow: bool) -> dict[str, str]:
    """Latency buckets: 100 requests a minute, all in the 2-3 ms or all in the 50-100 µs bucket."""
    name = "cps_edge_request_duration_seconds_bucket"
    labels = f'job="{JOB}",instance="{instance}"'
    bounds = {"0.0001": "0x30" if slow else "0+100x30", "0.002": "0x30" if slow else "0+100x30",
              "0.003": "0+100x30", "+Inf": "0+100x30"}
    return {f'{name}{{{labels},le="{le}"}}': v for le, v in bounds.items()}


def alert(name: str, **labels: str) -> str:
    severity = next(r["labels"]["severity"] for r in alert_rules() if r["alert"] == name)
    all_labels = {"alertname": name, "alertstate": "firing", "severity": severity, **labels}
    return "ALERTS{" + ",".join(f'{k}="{v}"' for k, v in sorted(all_labels.items())) + "}"


@dataclass
class Scenario:
    series: dict[str, str]
    firing: dict[str, list[str]]  # eval time -> exactly the alerts firing then


FALLBACK_MODE = 'cps_edge_delivery_mode{mode="fallback"}'
SCENARIOS: dict[str, Scenario] = {
    "healthy edge fires nothing": Scenario(
        {**edge_series("e1", {"cps_edge_clicks_dropped_total": "0x30",
                              FALLBACK_MODE: "0x30",
                              'cps_edge_delivery_mode{mode="kafka"}': "2x30",
                              "cps_edge_fallback_pending_records": "0x30",
                              "cps_edge_spool_pending_records": "0x30",
                              'cps_edge_delivery_errors_total{path="kafka"}': "0x30",
                              "cps_edge_buffer_overflow_total": "0x30"}),
         **slow_or_fast("e1", slow=False)},
        {"1m": [], "15m": [], "29m": []}),
    "one dropped click is critical at once, and clears": Scenario(
        edge_series("e1", {"cps_edge_clicks_dropped_total": "0 0 0 3x27"}),
        {"2m": [], "4m": [alert("CpsEdgeClicksDropped", instance="e1")], "12m": []}),
    "fallback for more than 5 minutes": Scenario(
        edge_series("e1", {FALLBACK_MODE: "0 1x29"}),
        {"5m": [], "7m": [alert("CpsEdgeFallbackInUse", instance="e1")]}),
    "a short fallback does not alert": Scenario(
        edge_series("e1", {FALLBACK_MODE: "0 1 1 0x27"}),
        {"3m": [], "7m": []}),
    "fallback stream growing for 10 minutes": Scenario(
        edge_series("e1", {"cps_edge_fallback_pending_records": "0+50x30"}),
        {"8m": [], "13m": [alert("CpsEdgeFallbackBacklogGrowing")]}),
    "a draining fallback stream does not alert": Scenario(
        edge_series("e1", {"cps_edge_fallback_pending_records": "1500-50x30"}),
        {"20m": []}),
    "disk spool growing for 10 minutes": Scenario(
        edge_series("e1", {"cps_edge_spool_pending_records": "0+20x30"}),
        {"8m": [], "13m": [alert("CpsEdgeSpoolBacklogGrowing", instance="e1")]}),
    "slow redirects on one host for 10 minutes": Scenario(
        {**edge_series("slow"), **slow_or_fast("slow", slow=True),
         **edge_series("fast"), **slow_or_fast("fast", slow=False)},
        {"8m": [], "13m": [alert("CpsEdgeRedirectLatencyHigh", instance="slow")]}),
    "kafka delivery errors for 5 minutes": Scenario(
        edge_series("e1", {'cps_edge_delivery_errors_total{path="kafka"}': "0+5x30",
                           'cps_edge_delivery_errors_total{path="redis"}': "0x30"}),
        {"3m": [], "8m": [alert("CpsEdgeDeliveryErrors", instance="e1", path="kafka")]}),
    "buffer overflowing for 5 minutes": Scenario(
        edge_series("e1", {"cps_edge_buffer_overflow_total": "0+10x30"}),
        {"3m": [], "8m": [alert("CpsEdgeBufferOverflow", instance="e1")]}),
    "an edge host stops answering scrapes": Scenario(
        {f'up{{job="{JOB}",instance="e1"}}': "1 1 0x28",
         f'cps_edge_workers{{job="{JOB}",instance="e1"}}': "2 2 _x28"},
        {"1m": [],
         "4m": [alert("CpsEdgeNoLiveWorkers", instance="e1", job=JOB)],
         "13m": [alert("CpsEdgeNoLiveWorkers", instance="e1", job=JOB),
                 alert("CpsEdgeMetricsAbsent", job=JOB)]}),
    "an edge reporting no live worker": Scenario(
        edge_series("e1") | {f'cps_edge_workers{{job="{JOB}",instance="e1"}}': "0x30"},
        {"3m": [alert("CpsEdgeNoLiveWorkers", instance="e1")]}),
    "no edge scraped at all": Scenario(
        {'up{job="other",instance="x"}': "1x30"},
        {"3m": [], "6m": [alert("CpsEdgeMetricsAbsent", job=JOB)]}),
}


def test_every_alert_has_a_firing_scenario() -> None:
    fired = {re.search(r'alertname="(\w+)"', a).group(1)  # type: ignore[union-attr]
             for s in SCENARIOS.values() for alerts in s.firing.values() for a in alerts}
    assert fired == {r["alert"] for r in alert_rules()}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_alert_fires_exactly_in_its_scenario(name: str, tmp_path: Path) -> None:
    promtool = needs("promtool")
    scenario = SCENARIOS[name]
    spec = {
        "rule_files": [str(ALERTS_PATH)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in scenario.series.items()],
            "promql_expr_test": [
                {"expr": 'ALERTS{alertstate="firing"}', "eval_time": at,
                 "exp_samples": [{"labels": a, "value": 1} for a in alerts]}
                for at, alerts in scenario.firing.items()],
        }],
    }
    path = tmp_path / "alerts_test.yml"
    path.write_text(yaml.safe_dump(spec))
    run = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.returncode == 0, run.stdout + run.stderr


# -- a real edge: everything the dashboard and alerts query is exported ---------------------

_ips = itertools.count(1)


def fresh_ip() -> str:
    n = next(_ips)
    return f"10.99.{(n >> 8) & 255}.{n & 255}"


async def hit(edge: EdgeProcess, path: str, *, ip: str | None = None,
              ua: str = BROWSER) -> str:
    """One GET as a buyer at ``ip``; returns the verdict the edge reports."""
    r = await raw_request(edge.port, get_request(path, [
        ("User-Agent", ua), ("X-Forwarded-For", ip or fresh_ip())]))
    assert r is not None, f"no answer to {path}"
    assert r.verdict is not None, r
    return r.verdict


async def every_verdict(edge: EdgeProcess, keys: Keys) -> collections.Counter[str]:
    """Requests of every verdict; returns how many answers had each verdict.

    Needs an edge with a tight rate limit (burst 3), so that one address
    sending a handful of requests gets ``rate_limited``.
    """
    link = path_of(mint(keys, promoter="dash"))
    expired = path_of(mint(keys, promoter="old", expires_at=int(time.time()) - 60))
    unknown_key = path_of(mint_link("http://edge.test/c", ring=generate_ring(("zz",)),
                                    promoter_id="p", channel_id="c", target=TARGET,
                                    ttl_seconds=3600))
    # Signed with our key, but for a host the edge does not allow.
    foreign = path_of(mint_link("http://edge.test/c", ring=keys.link, promoter_id="p",
                                channel_id="c", target="https://elsewhere.example.net/",
                                ttl_seconds=3600))
    tampered = link[:-1] + ("1" if link[-1] == "0" else "0")
    seen: collections.Counter[str] = collections.Counter()
    for _ in range(3):
        seen[await hit(edge, link)] += 1
    buyer = fresh_ip()
    seen[await hit(edge, link, ip=buyer)] += 1
    seen[await hit(edge, link, ip=buyer)] += 1  # same buyer, same link: duplicate
    seen[await hit(edge, link, ua=GOOGLEBOT)] += 1
    for path in (expired, unknown_key, foreign, tampered, "/c?hello=world"):
        seen[await hit(edge, path)] += 1
    flooder = fresh_ip()
    for n in range(10):  # burst 3 at 1/s: bounded, and a refusal comes within a few
        verdict = await hit(edge, link, ip=flooder, ua=f"{BROWSER} flood-{n}")
        seen[verdict] += 1
        if verdict == "rate_limited" and n >= 4:
            break
    return seen


RATE_LIMITED_ENV = {"CPS_RATE_LIMIT_PER_S": "1", "CPS_RATE_LIMIT_BURST": "3"}


async def test_real_edge_exports_every_metric_and_label_value_the_ops_files_use(
        stack: LocalStack, keys: Keys, edge_factory: Callable[..., EdgeProcess]) -> None:
    edge = edge_factory(stack, env=RATE_LIMITED_ENV).start()
    sent = await every_verdict(edge, keys)
    assert set(sent) == {v.value for v in Verdict}, sent
    total = sum(sent.values())
    delivered = 'cps_edge_clicks_delivered_total{path="kafka"}'
    await asyncio.to_thread(edge.wait_for, "every click event acknowledged by Kafka",
                            lambda m: m[delivered] >= total)

    status, body = edge.get("/metrics")
    assert status == 200
    exp = Exported.parse(body.decode())
    # The scrape is this code version: same families, same types as the registry.
    assert exp.families() == registry_exports().families()

    missing = {name: where for name, where in referenced(all_exprs()).items()
               if name not in exp.kind}
    assert not missing, f"queried but not exported: {missing}"
    assert label_problems(all_exprs(), exp) == []

    # What the panels would show for this traffic.
    s = exp.samples
    for verdict in Verdict:
        assert s[f'cps_edge_requests_total{{verdict="{verdict.value}"}}'] == sent[verdict.value]
    assert s["cps_edge_request_duration_seconds_count"] == total
    assert s['cps_edge_request_duration_seconds_bucket{le="+Inf"}'] == total
    assert s[delivered] == total  # one click event per answer, whatever the verdict
    assert s['cps_edge_clicks_delivered_total{path="redis"}'] == 0
    assert s['cps_edge_clicks_delivered_total{path="spool"}'] == 0
    assert s["cps_edge_kafka_delivery_seconds_count"] >= 1
    assert s['cps_edge_delivery_mode{mode="kafka"}'] == 1
    assert s['cps_edge_delivery_mode{mode="fallback"}'] == 0
    assert s["cps_edge_workers"] == 1
    assert s["cps_edge_clicks_dropped_total"] == 0
    assert s["cps_edge_link_cache_entries"] >= 1


def test_label_check_catches_a_misspelt_label_value() -> None:
    exp = registry_exports()
    bad = [("panel 'x'", 'sum(cps_edge_delivery_mode{job=~"$job",mode="falback"})'),
           ("panel 'y'", 'sum(rate(cps_edge_requests_total{verdict=~"bot|robot"}[1m]))'),
           ("panel 'z'", "sum by (path) (rate(cps_edge_clicks_replayed_total[1m]))")]
    assert label_problems(bad, exp) == [
        "panel 'x': cps_edge_delivery_mode never has mode='falback'",
        "panel 'y': cps_edge_requests_total never has verdict='robot'",
        "panel 'z': grouping by 'path', absent from cps_edge_clicks_replayed_total",
    ]


# -- a real Prometheus scraping a real edge with the shipped config ------------------------

class Prometheus:
    def __init__(self, binary: str, tmp: Path, edge_port: int) -> None:
        config = dict(PROMETHEUS)
        config["global"] = {**config.get("global", {}), "scrape_interval": "1s",
                            "evaluation_interval": "1s"}
        config["rule_files"] = [str(ALERTS_PATH)]
        job = dict(config["scrape_configs"][0])
        job.update(scrape_interval="1s", scrape_timeout="1s",
                   static_configs=[{"targets": [f"127.0.0.1:{edge_port}"]}])
        config["scrape_configs"] = [job]
        path = tmp / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.proc = ManagedProcess(
            [binary, f"--config.file={path}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            log_path=tmp / "prometheus.log", name="prometheus")

    def get(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.get("/api/v1/query", query=expr)
        assert answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result


@pytest.fixture
def prometheus_binary() -> str:
    return needs("prometheus")


@pytest.fixture
def tmp_prometheus(prometheus_binary: str, tmp_path: Path) -> Iterator[Callable[[int], Prometheus]]:
    started: list[Prometheus] = []

    def start(edge_port: int) -> Prometheus:
        prom = Prometheus(prometheus_binary, tmp_path, edge_port)
        started.append(prom)
        prom.proc.start(ready=prom.ready, timeout=30)
        return prom

    yield start
    for prom in started:
        if prom.proc.alive:
            prom.proc.stop(timeout=20)


async def until(what: str, cond: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(cond):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.5)


def has_data(result: list[dict[str, Any]]) -> bool:
    return bool(result) and all(not math.isnan(float(r["value"][1])) for r in result)


async def test_real_prometheus_answers_every_dashboard_query_with_data(
        stack: LocalStack, keys: Keys, edge_factory: Callable[..., EdgeProcess],
        tmp_prometheus: Callable[[int], Prometheus]) -> None:
    edge = edge_factory(stack, env=RATE_LIMITED_ENV).start()
    prom = tmp_prometheus(edge.port)
    instance = f"127.0.0.1:{edge.port}"
    await until("the edge target is up",
                lambda: has_data(prom.query(f'up{{job="{JOB}",instance="{instance}"}} == 1')))
    sent = await every_verdict(edge, keys)
    await asyncio.to_thread(edge.wait_for, "Kafka acknowledged every click", lambda m: m[
        'cps_edge_clicks_delivered_total{path="kafka"}'] >= sum(sent.values()))

    queries = {(where, grafana_substituted(e, JOB, instance)) for where, e in dashboard_exprs()
               if not where.startswith("variable")}
    empty: list[str] = []

    def all_answer() -> bool:
        empty[:] = [f"{where}: {q}" for where, q in sorted(queries) if not has_data(prom.query(q))]
        return not empty

    try:
        await until("every dashboard query to return data", all_answer)
    except AssertionError:
        raise AssertionError("queries without data:\n" + "\n".join(empty)) from None

    # The template variables find this edge, as Grafana's label_values() would.
    jobs = prom.get("/api/v1/label/job/values", **{"match[]": "cps_edge_workers"})["data"]
    assert jobs == [JOB]
    instances = prom.get("/api/v1/label/instance/values",
                         **{"match[]": f'cps_edge_workers{{job="{JOB}"}}'})["data"]
    assert instances == [instance]

    # What the verdict panel shows: a rate for every verdict this test caused.
    by_verdict = prom.query(grafana_substituted(
        exprs_of(panel("Redirects per second by verdict"))[0], JOB, instance))
    shown = {r["metric"]["verdict"] for r in by_verdict if float(r["value"][1]) > 0}
    assert shown == set(sent)
    (workers,) = prom.query(grafana_substituted(
        exprs_of(panel("Workers by delivery mode"))[0], JOB, instance))
    assert float(workers["value"][1]) == 1

    # Every rule evaluates cleanly against real series, and a healthy edge fires nothing.
    rules = [r for g in prom.get("/api/v1/rules")["data"]["groups"] for r in g["rules"]]
    assert {r["name"] for r in rules} == {r["alert"] for r in alert_rules()}
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    firing = [a for a in prom.get("/api/v1/alerts")["data"]["alerts"] if a["state"] == "firing"]
    assert firing == []
