"""The attribution dashboard and alerts (ops/) query only what attribution_worker.metrics
exports, correctly.

* Static checks (no server): the Grafana JSON is importable anywhere (datasource variable,
  job/instance variables, unique ids, laid-out panels, a description saying what is normal
  on every panel); every metric name and label value the dashboard and the alert rules
  query is in ``attribution_worker.metrics.REGISTRY`` (its exposition after touching every
  labelled metric with its documented label values), and every metric it declares has a
  panel; the PromQL applies ``rate`` to counters, ``deriv`` to gauges, ``histogram_quantile``
  to bucket rates summed by ``le``, and never sums the database-wide queue gauges over
  processes.
* With ``promtool``: the config and rules pass ``promtool check``, and ``promtool test
  rules`` shows each alert firing exactly in its scenario.
* With ``prometheus``: a real Prometheus scrapes two attribution "processes" (each serving
  its own copy of the metrics module, as every service process does) with the shipped
  ``cps-attribution`` job, answers every panel's query with data, and evaluates every rule
  cleanly without firing.

Helpers shared with the edge's checks come from ``test_dashboard_metrics``.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from attribution_worker import metrics
from attribution_worker.order_store import OutcomeKind
from attribution_worker.rules import Rule
from attribution_worker.settings import AttributionSettings
from contracts.attribution import AttributionType
from contracts.topics import CLICK_FALLBACK_STREAM, CLICKS_TOPIC, ORDERS_TOPIC
from devstack.processes import ManagedProcess, free_port
from tests.integration.test_dashboard_metrics import (
    COUNTER_FUNCS,
    GAUGE_FUNCS,
    GROUPING,
    MATCHER,
    METRIC,
    QUANTILE,
    SELECTOR,
    Exported,
    OpsFiles,
    Scenario,
    balanced,
    exprs_of,
    grafana_substituted,
    has_data,
    label_problems,
    needs,
    referenced,
    until,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_PATH = ROOT / "ops" / "grafana" / "cps-attribution-dashboard.json"
PROMETHEUS_PATH = ROOT / "ops" / "prometheus" / "prometheus.yml"
ALERTS_PATH = ROOT / "ops" / "prometheus" / "attribution-alerts.yml"
RUNBOOK_PATH = ROOT / "ops" / "README.md"

DASHBOARD: dict[str, Any] = json.loads(DASHBOARD_PATH.read_text())
ALERTS: dict[str, Any] = yaml.safe_load(ALERTS_PATH.read_text())
PROMETHEUS: dict[str, Any] = yaml.safe_load(PROMETHEUS_PATH.read_text())

JOB = "cps-attribution"
DS = {"type": "prometheus", "uid": "${datasource}"}
# Gauges counting database rows: every process reports the same value.
DATABASE_GAUGES = ("cps_attribution_pending_orders", "cps_attribution_outbox_backlog")

# -- the label values each labelled metric is documented to take -------------------------

CLICK_SOURCES = (CLICKS_TOPIC, CLICK_FALLBACK_STREAM)
# attribution_worker.service.PrometheusPersisterMetrics: every click record is "consumed";
# "skipped" (not a valid click) and "bad" (dead-lettered) count some of them again.
CLICK_OUTCOMES = ("consumed", "skipped", "bad")
# order sync counts every order message once, by the order store's outcome.
ORDER_OUTCOMES = tuple(k.value for k in OutcomeKind)
# A RETRY outcome is not a decision: it counts in cps_attribution_retries_total.
DECISION_RULES = tuple(r.value for r in Rule if r is not Rule.RETRY)
ATTEMPTS = ("first", "later")

MESSAGE_LABELS: list[tuple[str, ...]] = [(s, o) for s in CLICK_SOURCES for o in CLICK_OUTCOMES]
MESSAGE_LABELS += [(ORDERS_TOPIC, o) for o in ORDER_OUTCOMES]
# metrics.<attribute> -> every label tuple it can be exported with.
TOUCH: dict[str, list[tuple[str, ...]]] = {
    "consumer_lag": [(CLICKS_TOPIC,), (ORDERS_TOPIC,)],
    "messages": MESSAGE_LABELS,
    "clicks_written": [(s,) for s in CLICK_SOURCES],
    "dead_letters": [(s,) for s in (*CLICK_SOURCES, ORDERS_TOPIC)],
    "decisions": [(t.value, r) for t in AttributionType for r in DECISION_RULES],
    "delay": [(a,) for a in ATTEMPTS],
}


def touch(module: ModuleType) -> None:
    """Create every documented child of every labelled metric (values unchanged)."""
    for attribute, label_sets in TOUCH.items():
        for values in label_sets:
            getattr(module, attribute).labels(*values)


def registry_exports() -> Exported:
    touch(metrics)
    return Exported.parse(generate_latest(metrics.REGISTRY).decode())


def declared_families() -> dict[str, str]:
    """Family name -> type of every metric declared in attribution_worker/metrics.py."""
    return {fam.name: fam.type for fam in metrics.REGISTRY.collect()}


# -- reading the ops files -------------------------------------------------------------

_OPS = OpsFiles(DASHBOARD, ALERTS)
panels, query_panels, panel = _OPS.panels, _OPS.query_panels, _OPS.panel
dashboard_exprs, alert_rules, alert_exprs = _OPS.dashboard_exprs, _OPS.alert_rules, _OPS.alert_exprs
all_exprs = _OPS.all_exprs


def groupings(expr: str) -> list[tuple[frozenset[str], set[str]]]:
    """(labels, metrics aggregated) of every ``... by (labels) (...)`` in ``expr``."""
    out = []
    for m in GROUPING.finditer(expr):
        labels = frozenset(x.strip() for x in m.group(1).split(",") if x.strip())
        out.append((labels, set(METRIC.findall(balanced(expr, m.end() - 1)))))
    return out


def attribution_job() -> dict[str, Any]:
    (job,) = [j for j in PROMETHEUS["scrape_configs"] if j["job_name"] == JOB]
    return dict(job)


# -- static: the Grafana dashboard ---------------------------------------------------------

def test_dashboard_imports_anywhere_through_a_prometheus_datasource_variable() -> None:
    assert DASHBOARD["schemaVersion"] >= 39
    assert DASHBOARD["title"] == "CPS attribution"
    assert DASHBOARD["uid"] == "cps-attribution"
    edge = json.loads((ROOT / "ops" / "grafana" / "cps-edge-dashboard.json").read_text())
    assert DASHBOARD["uid"] != edge["uid"]
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == DS
        assert variables[name]["includeAll"] is True
        assert variables[name]["multi"] is True
    for p in query_panels():
        assert p["datasource"] == DS, p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DS, p["title"]


def test_every_panel_has_an_id_a_place_a_title_a_description_a_unit_and_a_query() -> None:
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    cells: dict[tuple[int, int], str] = {}
    for p in panels():
        grid = p["gridPos"]
        assert grid["w"] > 0, p["title"]
        assert grid["h"] > 0, p["title"]
        assert grid["x"] + grid["w"] <= 24, p["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
    titles = [p["title"] for p in query_panels()]
    assert len(titles) == len(set(titles))
    for p in query_panels():
        assert p["type"] in ("timeseries", "stat"), p["title"]
        # What it shows, and what a healthy service looks like on it.
        assert len(p["description"]) > 80, p["title"]
        assert "Normal" in p["description"], p["title"]
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
        selectors = SELECTOR.findall(expr)
        for name, body in selectors:
            assert 'job=~"$job"' in body, (where, name)
            assert 'instance=~"$instance"' in body, (where, name)
        assert len(selectors) == len(METRIC.findall(expr)), \
            f"{where}: a metric without a selector escapes the variables: {expr}"


def test_every_metric_and_label_value_the_ops_files_query_is_in_the_registry() -> None:
    exp = registry_exports()
    missing = {name: where for name, where in referenced(all_exprs()).items()
               if name not in exp.kind}
    assert not missing, f"queried but not in attribution_worker.metrics: {missing}"
    assert label_problems(all_exprs(), exp) == []
    # Every label value a selector names is one the code documents (TOUCH), so a renamed
    # topic, rule or outcome breaks this test rather than an empty panel.
    for where, expr in all_exprs():
        for name, body in SELECTOR.findall(expr):
            for label, op, value in MATCHER.findall(body):
                if label in ("job", "instance"):
                    continue
                assert op in ("=", "=~"), f"{where}: {label}{op}{value!r}"
                for v in value.split("|") if op == "=~" else [value]:
                    assert v in exp.values[(name, label)], (where, name, label, v)


def test_touch_list_gives_every_labelled_metric_its_documented_values() -> None:
    exp = registry_exports()
    for fam in metrics.REGISTRY.collect():
        assert [s for s in fam.samples if not s.name.endswith("_created")], \
            f"{fam.name}: labelled metric missing from TOUCH (no sample to check against)"
    assert exp.values[("cps_attribution_delay_seconds_bucket", "attempt")] == set(ATTEMPTS)
    assert exp.values[("cps_attribution_consumer_lag_messages", "topic")] == {
        CLICKS_TOPIC, ORDERS_TOPIC}
    assert exp.values[("cps_attribution_decisions_total", "type")] == {
        t.value for t in AttributionType}


def test_every_declared_metric_has_a_panel() -> None:
    exp = registry_exports()
    on_dashboard = {exp.family[n] for n in referenced(dashboard_exprs()) if n in exp.family}
    missing = set(declared_families()) - on_dashboard
    assert not missing, f"metrics of attribution_worker/metrics.py on no panel: {sorted(missing)}"
    assert len(declared_families()) == 10


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
            assert name == "cps_attribution_delay_seconds_bucket", where
            assert "le" in [x.strip() for x in by.split(",")], f"{where}: not summed by le"
        assert len(quantiles) == expr.count("histogram_quantile"), \
            f"{where}: histogram_quantile not of the form q, sum by (le) (rate(bucket[...]))"
        assert len(quantiles) == len(re.findall(r"_bucket\b", expr)), where
        # Counters are only ever read through rate/increase or as a raw "since start" sum.
        for name in METRIC.findall(expr):
            if name.endswith("_total") and not COUNTER_FUNCS.search(expr):
                # only as a raw "since process start" sum
                assert expr.startswith("sum("), where
                assert expr.count("(") == 1, where


def test_database_gauges_are_never_summed_over_processes() -> None:
    for where, expr in all_exprs():
        for gauge in DATABASE_GAUGES:
            if gauge in expr and not where.startswith("variable"):
                assert re.search(rf"\b(max|min)\s*\(\s*(\w+\()?\s*{gauge}", expr) \
                    or "absent(" in expr, f"{where}: {gauge} must be max/min over processes"
                assert not re.search(rf"\bsum\b[^()]*\(\s*(\w+\()?\s*{gauge}", expr), where


def test_the_panels_the_issue_asks_for_are_there() -> None:
    wanted = {  # (metric, grouping labels) -> where it must be shown
        ("cps_attribution_consumer_lag_messages", frozenset({"topic"})): "Consumer lag per topic",
        ("cps_attribution_decisions_total", frozenset({"type"})): "Decisions per second by type",
        ("cps_attribution_decisions_total", frozenset({"rule"})): "Decisions per second by rule",
        ("cps_attribution_dead_letters_total", frozenset({"source"})):
            "Dead letters per minute by source",
        ("cps_attribution_clicks_written_total", frozenset({"source"})):
            "Click-store writes per second by source",
        ("cps_attribution_messages_total", frozenset({"topic", "outcome"})):
            "Messages per second by topic and outcome",
    }
    for (name, labels), title in wanted.items():
        assert any(labels == g and name in names
                   for e in exprs_of(panel(title)) for g, names in groupings(e)), (title, name)
    # The delay percentiles: first looks apart from later ones, p50/p90/p99 each.
    for title, attempt in (("First-look attribution delay", "first"),
                           ("Delayed attribution delay (later looks)", "later")):
        p = panel(title)
        assert [t["legendFormat"] for t in p["targets"]][:3] == ["p50", "p90", "p99"]
        for e in exprs_of(p):
            for _, body in SELECTOR.findall(e):
                assert f'attempt="{attempt}"' in body, (title, e)
    first = panel("First-look attribution delay")
    assert first["fieldConfig"]["defaults"]["thresholds"]["steps"][-1]["value"] == 1
    joined = " ".join(e for _, e in dashboard_exprs())
    for name in ("cps_attribution_pending_orders", "cps_attribution_outbox_backlog",
                 "cps_attribution_retries_total", "cps_attribution_late_clicks_total"):
        assert name in joined
    # Every histogram query names its attempt: mixing first and later looks hides the
    # first-look delay under the retry schedule's.
    for where, expr in all_exprs():
        for name, body in SELECTOR.findall(expr):
            if name.startswith("cps_attribution_delay_seconds"):
                assert "attempt=" in body, where


def test_top_row_is_stats() -> None:
    top = sorted((p for p in query_panels() if p["gridPos"]["y"] <= 1),
                 key=lambda p: p["gridPos"]["x"])
    assert [p["type"] for p in top] == ["stat"] * 6
    dead = panel("Dead letters (time range)")
    steps = dead["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[0] == {"color": "green", "value": None}
    assert steps[-1]["color"] == "red"
    assert 0 < steps[-1]["value"] <= 1


# -- static: Prometheus config and alert rules -------------------------------------------

def test_prometheus_config_scrapes_every_attribution_process_and_loads_the_rules() -> None:
    job = attribution_job()
    assert job["metrics_path"] == "/metrics"
    assert job["scrape_interval"] == "5s"
    default_port = AttributionSettings.model_fields["http_port"].default
    assert job["static_configs"][0]["targets"] == [f"127.0.0.1:{default_port}"]
    assert "attribution-alerts.yml" in PROMETHEUS["rule_files"]
    assert "alerts.yml" in PROMETHEUS["rule_files"]
    # The edge's checks (and its real-Prometheus test) take the first job as the edge's.
    assert PROMETHEUS["scrape_configs"][0]["job_name"] == "cps-edge"
    text = PROMETHEUS_PATH.read_text()
    attribution_part = text[text.index("job_name: cps-attribution"):]
    assert "EVERY attribution process" in attribution_part
    assert "scrape EVERY process" in attribution_part


REQUIRED_ALERTS = {
    "CpsAttributionConsumerLagHigh": "warning",
    "CpsAttributionConsumerLagGrowing": "warning",
    "CpsAttributionFirstLookDelayHigh": "warning",
    "CpsAttributionDeadLetters": "warning",
    "CpsAttributionOutboxBacklogGrowing": "warning",
    "CpsAttributionOutboxNotDraining": "critical",
    "CpsAttributionPendingQueueGrowing": "warning",
    "CpsAttributionMetricsAbsent": "critical",
}


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub generates for the headings of ``markdown``."""
    out = set()
    for heading in re.findall(r"^#+\s+(.+?)\s*$", markdown, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        out.add(slug)
    return out


def test_alert_rules_are_complete_and_documented() -> None:
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    severities = {r["alert"]: r["labels"]["severity"] for r in rules}
    assert severities == REQUIRED_ALERTS
    runbook = RUNBOOK_PATH.read_text()
    section = runbook[runbook.index("## Attribution alerts"):]
    anchors = github_anchors(runbook)
    for r in rules:
        assert r["annotations"]["summary"].strip(), r["alert"]
        assert r["annotations"]["description"].strip(), r["alert"]
        link = r["annotations"]["runbook"]
        path, _, anchor = link.partition("#")
        assert path == "ops/README.md", r["alert"]
        assert anchor == r["alert"].lower(), r["alert"]
        assert anchor in anchors, f"{r['alert']}: no heading for {link}"
        assert f"### {r['alert']}\n" in section, r["alert"]
        for name, body in SELECTOR.findall(r["expr"]):
            assert f'job="{JOB}"' in body, f"{r['alert']}: {name} not limited to job {JOB}"
    by_name = {r["alert"]: r for r in rules}
    delay = by_name["CpsAttributionFirstLookDelayHigh"]
    assert delay["for"] == "5m"
    assert re.search(r"histogram_quantile\(0\.99,", delay["expr"])
    assert 'attempt="first"' in delay["expr"]
    assert delay["expr"].rstrip().endswith("> 1")
    assert "for" not in by_name["CpsAttributionDeadLetters"]  # at the first dead letter
    for name in ("CpsAttributionConsumerLagHigh", "CpsAttributionConsumerLagGrowing"):
        assert any("topic" in g for g, _ in groupings(by_name[name]["expr"])), name
    assert "deriv(" in by_name["CpsAttributionConsumerLagGrowing"]["expr"]
    assert "deriv(" in by_name["CpsAttributionOutboxBacklogGrowing"]["expr"]
    assert "deriv(" in by_name["CpsAttributionPendingQueueGrowing"]["expr"]


# -- promtool: syntax, and when each alert fires ------------------------------------------

def test_promtool_accepts_the_config_and_the_rules() -> None:
    promtool = needs("promtool")
    for args in (["check", "rules", str(ALERTS_PATH)], ["check", "config", str(PROMETHEUS_PATH)]):
        run = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60,
                             check=False)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "SUCCESS" in run.stdout + run.stderr
    # check config loads every rule file it names, ours included.
    assert "attribution-alerts.yml" in run.stdout + run.stderr


def proc_series(instance: str, series: dict[str, str] | None = None) -> dict[str, str]:
    """Input series of one scraped attribution process (one sample a minute for 2 hours).

    ``series`` maps ``name`` or ``name{label="value"}`` to promtool values; job and
    instance labels are added. The queue gauge is always there (a live process).
    """
    labels = f'job="{JOB}",instance="{instance}"'
    out = {f"cps_attribution_pending_orders{{{labels}}}": "100x120",
           f"cps_attribution_outbox_backlog{{{labels}}}": "0x120"}
    for key, values in (series or {}).items():
        name, _, extra = key.partition("{")
        out[f"{name}{{{labels}{',' + extra.rstrip('}') if extra else ''}}}"] = values
    return out


def delay_buckets(instance: str, attempt: str, slow: bool) -> dict[str, str]:
    """100 decisions a minute, all within 50-100 ms (fast) or within 1-2.5 s (slow)."""
    bounds = {"0.05": "0x120", "0.1": "0x120" if slow else "0+100x120",
              "1": "0x120" if slow else "0+100x120", "2.5": "0+100x120", "+Inf": "0+100x120"}
    return proc_series(instance, {
        f'cps_attribution_delay_seconds_bucket{{attempt="{attempt}",le="{le}"}}': v
        for le, v in bounds.items()})


def alert(name: str, **labels: str) -> str:
    all_labels = {"alertname": name, "alertstate": "firing",
                  "severity": REQUIRED_ALERTS[name], **labels}
    return "ALERTS{" + ",".join(f'{k}="{v}"' for k, v in sorted(all_labels.items())) + "}"


LAG = "cps_attribution_consumer_lag_messages"
MSG = "cps_attribution_messages_total"
DEAD = "cps_attribution_dead_letters_total"
CLICKS_LAG = f'{LAG}{{topic="{CLICKS_TOPIC}"}}'
ORDERS_LAG = f'{LAG}{{topic="{ORDERS_TOPIC}"}}'
CLICKS_CONSUMED = f'{MSG}{{topic="{CLICKS_TOPIC}",outcome="consumed"}}'
ORDERS_APPLIED = f'{MSG}{{topic="{ORDERS_TOPIC}",outcome="applied"}}'
BUSY_OUTBOX = " ".join("0" if i % 2 else "500" for i in range(121))


def healthy(instance: str) -> dict[str, str]:
    return {**proc_series(instance, {
        CLICKS_LAG: "50x120", ORDERS_LAG: "5x120",
        CLICKS_CONSUMED: "0+600x120", ORDERS_APPLIED: "0+60x120",
        f'{MSG}{{topic="{CLICKS_TOPIC}",outcome="skipped"}}': "0+100x120",
        f'{DEAD}{{source="{CLICKS_TOPIC}"}}': "0x120",
        f'{DEAD}{{source="{ORDERS_TOPIC}"}}': "0x120"}),
        **delay_buckets(instance, "first", slow=False),
        **delay_buckets(instance, "later", slow=True)}


SCENARIOS: dict[str, Scenario] = {
    "two healthy processes fire nothing": Scenario(
        {**healthy("p1"), **healthy("p2")},
        {"5m": [], "30m": [], "70m": [], "119m": []}),
    "clicks lag far behind the consumption rate for 10 minutes": Scenario(
        {**healthy("p2"), **proc_series("p1", {CLICKS_LAG: "20000x60",
                                               CLICKS_CONSUMED: "0+600x60"})},
        {"8m": [], "13m": [alert("CpsAttributionConsumerLagHigh", topic=CLICKS_TOPIC)]}),
    "a large lag consumed within seconds does not alert": Scenario(
        proc_series("p1", {CLICKS_LAG: "5000x60", CLICKS_CONSUMED: "0+60000x60"}),
        {"20m": [], "40m": []}),
    "stalled consumers alert, counted or never counted": Scenario(
        proc_series("p1", {ORDERS_LAG: "5000x60", ORDERS_APPLIED: "100x60",
                           CLICKS_LAG: "3000x60"}),
        {"8m": [], "13m": [alert("CpsAttributionConsumerLagHigh", topic=CLICKS_TOPIC),
                           alert("CpsAttributionConsumerLagHigh", topic=ORDERS_TOPIC)]}),
    "lag growing for 15 minutes, summed over two processes": Scenario(
        {**proc_series("p1", {CLICKS_LAG: "0+100x60", CLICKS_CONSUMED: "0+60000x60"}),
         **proc_series("p2", {CLICKS_LAG: "0+100x60", CLICKS_CONSUMED: "0+60000x60"})},
        {"18m": [], "24m": [alert("CpsAttributionConsumerLagGrowing", topic=CLICKS_TOPIC)]}),
    "a small growing lag does not alert": Scenario(
        proc_series("p1", {CLICKS_LAG: "0+10x60", CLICKS_CONSUMED: "0+60000x60"}),
        {"40m": []}),
    "slow first looks for 5 minutes; slow later looks are normal": Scenario(
        {**delay_buckets("p1", "first", slow=True), **delay_buckets("p1", "later", slow=True),
         **delay_buckets("p2", "first", slow=False)},
        {"4m": [], "8m": [alert("CpsAttributionFirstLookDelayHigh")]}),
    "a process's first dead letter alerts at once, and clears": Scenario(
        proc_series("p1", {f'{DEAD}{{source="{ORDERS_TOPIC}"}}': "_ _ _ 1x27"}),
        {"2m": [], "4m": [alert("CpsAttributionDeadLetters", source=ORDERS_TOPIC)],
         "12m": []}),
    "more dead letters on a counter already there": Scenario(
        proc_series("p1", {f'{DEAD}{{source="{CLICK_FALLBACK_STREAM}"}}': "0 0 0 2x27",
                           f'{DEAD}{{source="{CLICKS_TOPIC}"}}': "0x30"}),
        {"2m": [], "4m": [alert("CpsAttributionDeadLetters", source=CLICK_FALLBACK_STREAM)],
         "12m": []}),
    "outbox growing for 10 minutes, then never empty": Scenario(
        {**proc_series("p1", {"cps_attribution_outbox_backlog": "0+20x60"}),
         **proc_series("p2", {"cps_attribution_outbox_backlog": "0+20x60"})},
        {"8m": [], "13m": [alert("CpsAttributionOutboxBacklogGrowing")],
         "25m": [alert("CpsAttributionOutboxBacklogGrowing"),
                 alert("CpsAttributionOutboxNotDraining")]}),
    "a stuck outbox with no new decisions is not draining": Scenario(
        proc_series("p1", {"cps_attribution_outbox_backlog": "0 40x60"}),
        {"19m": [], "23m": [alert("CpsAttributionOutboxNotDraining")]}),
    "a busy outbox that keeps emptying does not alert": Scenario(
        proc_series("p1", {"cps_attribution_outbox_backlog": BUSY_OUTBOX}),
        {"30m": [], "60m": []}),
    "pending queue growing for an hour": Scenario(
        proc_series("p1", {"cps_attribution_pending_orders": "100+10x120"}),
        {"50m": [], "65m": [alert("CpsAttributionPendingQueueGrowing")]}),
    "a queue filling up to its plateau (the retry schedule) does not alert": Scenario(
        proc_series("p1", {"cps_attribution_pending_orders": "0+100x36 3600x84"}),
        {"40m": [], "50m": [], "62m": [], "65m": [], "110m": []}),
    "no attribution process scraped at all": Scenario(
        {'up{job="other",instance="x"}': "1x30"},
        {"3m": [], "6m": [alert("CpsAttributionMetricsAbsent", job=JOB)]}),
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


# -- a real Prometheus scraping two attribution processes with the shipped config ---------

def metrics_copy(n: int) -> ModuleType:
    """A fresh copy of attribution_worker/metrics.py: one process's own registry."""
    spec = importlib.util.spec_from_file_location(f"_attribution_metrics_{n}", metrics.__file__)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LAG_PER_TOPIC = 3
PENDING = 10


def tick(m: Any) -> None:
    """What a busy, healthy process does between two scrapes."""
    touch(m)
    for topic in (CLICKS_TOPIC, ORDERS_TOPIC):
        m.consumer_lag.labels(topic).set(LAG_PER_TOPIC)
    for source in CLICK_SOURCES:
        m.messages.labels(source, "consumed").inc(20)
        m.messages.labels(source, "skipped").inc(5)
        m.clicks_written.labels(source).inc(15)
    for outcome in ORDER_OUTCOMES:
        m.messages.labels(ORDERS_TOPIC, outcome).inc(3)
    for t, r in ((AttributionType.CPS, Rule.CPS_LAST_CLICK),
                 (AttributionType.SELF_OPERATED, Rule.SELF_OPERATED),
                 (AttributionType.NONE, Rule.NOT_ATTRIBUTED)):
        m.decisions.labels(t.value, r.value).inc(2)
    m.delay.labels("first").observe(0.08)
    m.delay.labels("later").observe(70)
    m.retries.inc(4)
    m.late_clicks.inc()
    m.pending.set(PENDING)
    m.outbox_backlog.set(0)


class MetricsServer:
    """One attribution process's /metrics: its own registry, ticking at every scrape."""

    def __init__(self, n: int) -> None:
        module = metrics_copy(n)
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with lock:
                    tick(module)
                    body = generate_latest(module.REGISTRY)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Prometheus:
    def __init__(self, binary: str, tmp: Path, targets: list[str]) -> None:
        config = dict(PROMETHEUS)
        config["global"] = {**config.get("global", {}), "scrape_interval": "1s",
                            "evaluation_interval": "1s"}
        config["rule_files"] = [str(ALERTS_PATH)]
        job = dict(attribution_job())
        job.update(scrape_interval="1s", scrape_timeout="1s",
                   static_configs=[{"targets": targets}])
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
def processes() -> Iterator[list[MetricsServer]]:
    servers = [MetricsServer(1), MetricsServer(2)]
    yield servers
    for s in servers:
        s.close()


@pytest.fixture
def prometheus(processes: list[MetricsServer], tmp_path: Path) -> Iterator[Prometheus]:
    prom = Prometheus(needs("prometheus"), tmp_path,
                      [f"127.0.0.1:{s.port}" for s in processes])
    prom.proc.start(ready=prom.ready, timeout=30)
    yield prom
    if prom.proc.alive:
        prom.proc.stop(timeout=20)


def value(result: list[dict[str, Any]]) -> float:
    (only,) = result
    return float(only["value"][1])


async def test_real_prometheus_answers_every_dashboard_query_with_data(
        processes: list[MetricsServer], prometheus: Prometheus) -> None:
    prom = prometheus
    instances = sorted(f"127.0.0.1:{s.port}" for s in processes)
    await until("both attribution processes are up", lambda: len(
        prom.query(f'up{{job="{JOB}"}} == 1')) == 2)

    instance_re = "|".join(instances)
    queries = {(where, grafana_substituted(e, JOB, instance_re)) for where, e in dashboard_exprs()
               if not where.startswith("variable")}
    empty: list[str] = []

    def all_answer() -> bool:
        empty[:] = [f"{where}: {q}" for where, q in sorted(queries) if not has_data(prom.query(q))]
        return not empty

    try:
        await until("every dashboard query to return data", all_answer)
    except AssertionError:
        raise AssertionError("queries without data:\n" + "\n".join(empty)) from None

    # The template variables find both processes, as Grafana's label_values() would.
    variables = {v["name"]: v["definition"] for v in DASHBOARD["templating"]["list"]
                 if v["type"] == "query"}
    metric = re.fullmatch(r"label_values\((\w+), job\)", variables["job"])
    assert metric is not None
    jobs = prom.get("/api/v1/label/job/values", **{"match[]": metric.group(1)})["data"]
    assert jobs == [JOB]
    found = prom.get("/api/v1/label/instance/values",
                     **{"match[]": f'{metric.group(1)}{{job="{JOB}"}}'})["data"]
    assert sorted(found) == instances

    def shown(title: str, ref: int = 0) -> list[dict[str, Any]]:
        return prom.query(grafana_substituted(exprs_of(panel(title))[ref], JOB, instance_re))

    # Lag is summed over processes, the database-wide queue gauges are not.
    assert value(shown("Consumer lag (messages)")) == 2 * 2 * LAG_PER_TOPIC
    assert {r["metric"]["topic"]: float(r["value"][1])
            for r in shown("Consumer lag per topic")} == {
        CLICKS_TOPIC: 2 * LAG_PER_TOPIC, ORDERS_TOPIC: 2 * LAG_PER_TOPIC}
    assert value(shown("Delayed-attribution queue (orders)")) == PENDING
    assert {r["metric"]["type"] for r in shown("Decisions per second by type")} == {
        t.value for t in AttributionType}
    assert {r["metric"]["topic"] for r in shown("Time behind per topic")} == {
        CLICKS_TOPIC, ORDERS_TOPIC}
    assert 0.05 < value(shown("First-look attribution delay", 2)) <= 0.1
    assert 50 < value(shown("Delayed attribution delay (later looks)", 0)) <= 120

    # Every rule evaluates cleanly against real series, and a healthy service fires nothing.
    def rules() -> list[dict[str, Any]]:
        return [r for g in prom.get("/api/v1/rules")["data"]["groups"] for r in g["rules"]]

    await until("every rule evaluated", lambda: all(r["health"] != "unknown" for r in rules()))
    assert {r["name"] for r in rules()} == {r["alert"] for r in alert_rules()}
    assert [(r["name"], r.get("lastError")) for r in rules() if r["health"] != "ok"] == []
    assert prom.get("/api/v1/alerts")["data"]["alerts"] == []  # not even pending
