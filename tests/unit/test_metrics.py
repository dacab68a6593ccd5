"""Shared-memory Prometheus metrics (edge.metrics): slots, rendering, multi-process sums."""

from __future__ import annotations

import importlib.util
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge import telemetry
from edge.metrics import Registry

ROOT = Path(__file__).resolve().parents[2]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: bytes) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def families(text: bytes) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text.decode())}


class Metrics:
    """A small metric set declared the same way in every process that imports it."""

    def __init__(self, hits_name: str = "t_hits_total") -> None:
        self.reg = Registry()
        self.hits = self.reg.counter(hits_name, "Hits by kind.", "kind", ("a", "b"))
        self.plain = self.reg.counter("t_plain_total", "A counter without labels.")
        self.live = self.reg.gauge("t_live", "Summed over live processes.")
        self.peak = self.reg.gauge("t_peak", "Max over live processes.", mode="max")
        self.mode = self.reg.gauge("t_mode", "A labelled gauge.", label="mode",
                                   values=("x", "y"))
        self.lat = self.reg.histogram("t_latency_seconds", "Latency.", (0.01, 0.001))


# ------------------------------------------------------------------ in-memory mode


@pytest.fixture
def mem() -> Iterator[Metrics]:
    m = Metrics()
    m.reg.open(None)
    yield m
    m.reg.close()


def test_counters_with_and_without_labels(mem: Metrics) -> None:
    mem.hits.inc(label_value="a")
    mem.hits.inc(5, label_value="b")
    mem.hits.inc(2, "a")
    mem.plain.inc()
    assert mem.hits.value("a") == 3
    assert mem.hits.value("b") == 5
    assert mem.plain.value() == 1
    # Hot paths bump the resolved slot directly.
    mem.reg.slots[mem.hits.index("b")] += 10
    assert mem.hits.value("b") == 15
    s = parse(mem.reg.render())
    assert s[("t_hits_total", (("kind", "a"),))] == 3
    assert s[("t_hits_total", (("kind", "b"),))] == 15
    assert s[("t_plain_total", ())] == 1


def test_unknown_label_value_is_an_error(mem: Metrics) -> None:
    with pytest.raises(ValueError, match="not in tuple"):
        mem.hits.inc(label_value="zzz")


def test_gauges_set_and_render(mem: Metrics) -> None:
    mem.live.set(7)
    mem.live.set(4)
    mem.peak.set(9)
    mem.mode.set(1, "x")
    mem.mode.set(3, "y")
    s = parse(mem.reg.render())
    assert s[("t_live", ())] == 4
    assert s[("t_peak", ())] == 9
    assert s[("t_mode", (("mode", "x"),))] == 1
    assert s[("t_mode", (("mode", "y"),))] == 3


def test_histogram_bucket_placement_uses_le_semantics(mem: Metrics) -> None:
    # Bounds are sorted whatever the declaration order: 0.001, 0.01, +Inf.
    mem.lat.observe_ns(0)  # le 0.001
    mem.lat.observe_ns(1_000_000)  # exactly 0.001: le 0.001
    mem.lat.observe_ns(1_000_001)  # le 0.01
    mem.lat.observe_ns(10_000_000)  # exactly 0.01: le 0.01
    mem.lat.observe_ns(10_000_001)  # +Inf
    mem.lat.observe_ns(5 * 10**9)  # +Inf
    s = parse(mem.reg.render())
    bucket = "t_latency_seconds_bucket"
    assert s[(bucket, (("le", "0.001"),))] == 2
    assert s[(bucket, (("le", "0.01"),))] == 4  # cumulative
    assert s[(bucket, (("le", "+Inf"),))] == 6
    assert s[("t_latency_seconds_count", ())] == 6
    expected_ns = 0 + 1_000_000 + 1_000_001 + 10_000_000 + 10_000_001 + 5 * 10**9
    assert s[("t_latency_seconds_sum", ())] == pytest.approx(expected_ns / 1e9)


def test_histogram_rendering_is_cumulative_and_ordered(mem: Metrics) -> None:
    for ns in (500_000, 2_000_000, 3_000_000, 20_000_000):
        mem.lat.observe_ns(ns)
    lines = [ln for ln in mem.reg.render().decode().splitlines()
             if ln.startswith("t_latency_seconds")]
    assert lines == [
        't_latency_seconds_bucket{le="0.001"} 1',
        't_latency_seconds_bucket{le="0.01"} 3',
        't_latency_seconds_bucket{le="+Inf"} 4',
        "t_latency_seconds_count 4",
        "t_latency_seconds_sum 0.0255",
    ]


def test_every_observation_lands_in_the_first_bucket_whose_bound_holds() -> None:
    reg = Registry()
    h = reg.histogram("h_seconds", "h", telemetry.LATENCY_BUCKETS)
    reg.open(None)
    bounds_ns = [round(b * 1e9) for b in telemetry.LATENCY_BUCKETS]
    for ns in bounds_ns:
        h.observe_ns(ns)  # exactly at each bound
    s = parse(reg.render())
    for i, bound in enumerate(telemetry.LATENCY_BUCKETS):
        assert s[("h_seconds_bucket", (("le", repr(bound)),))] == i + 1, bound
    assert s[("h_seconds_bucket", (("le", "+Inf"),))] == len(bounds_ns)


def test_bucket_bound_not_exact_in_binary_floating_point() -> None:
    reg = Registry()
    h = reg.histogram("h_seconds", "h", (0.00013, 0.00207))
    reg.open(None)
    h.observe_ns(130_000)
    h.observe_ns(2_070_000)
    s = parse(reg.render())
    assert s[("h_seconds_bucket", (("le", "0.00013"),))] == 1
    assert s[("h_seconds_bucket", (("le", "0.00207"),))] == 2


def test_exposition_has_help_and_type_for_every_metric(mem: Metrics) -> None:
    text = mem.reg.render().decode()
    for name, kind, help_text in [
        ("t_hits_total", "counter", "Hits by kind."),
        ("t_plain_total", "counter", "A counter without labels."),
        ("t_live", "gauge", "Summed over live processes."),
        ("t_peak", "gauge", "Max over live processes."),
        ("t_mode", "gauge", "A labelled gauge."),
        ("t_latency_seconds", "histogram", "Latency."),
    ]:
        assert f"# HELP {name} {help_text}\n" in text
        assert f"# TYPE {name} {kind}\n" in text
    assert text.endswith("\n")
    assert families(mem.reg.render()) == {
        "t_hits": "counter", "t_plain": "counter", "t_live": "gauge", "t_peak": "gauge",
        "t_mode": "gauge", "t_latency_seconds": "histogram"}


def test_in_memory_open_starts_from_zero_and_renders_own_slots() -> None:
    m = Metrics()
    m.reg.open(None)
    m.plain.inc(4)
    m.live.set(2)
    s = parse(m.reg.render())
    assert s[("t_plain_total", ())] == 4
    assert s[("t_live", ())] == 2
    m.reg.open(None)  # reopening gives fresh slots
    assert m.plain.value() == 0
    assert parse(m.reg.render())[("t_plain_total", ())] == 0


def test_edge_telemetry_registry_renders_valid_exposition() -> None:
    telemetry.REGISTRY.open(None)
    telemetry.requests.inc(label_value="valid")
    telemetry.request_seconds.observe_ns(40_000)
    telemetry.delivery_mode.set(1, "kafka")
    text = telemetry.REGISTRY.render()
    fams = families(text)
    assert fams["cps_edge_requests"] == "counter"
    assert fams["cps_edge_request_duration_seconds"] == "histogram"
    assert fams["cps_edge_fallback_pending_records"] == "gauge"
    s = parse(text)
    assert s[("cps_edge_requests_total", (("verdict", "valid"),))] == 1
    assert s[("cps_edge_requests_total", (("verdict", "bot"),))] == 0
    assert s[("cps_edge_request_duration_seconds_bucket", (("le", "5e-05"),))] == 1
    assert s[("cps_edge_delivery_mode", (("mode", "kafka"),))] == 1
    telemetry.REGISTRY.open(None)


def test_layout_hash_depends_on_the_metric_set() -> None:
    assert Metrics().reg.layout_hash == Metrics().reg.layout_hash
    assert Metrics().reg.layout_hash != Metrics("t_other_total").reg.layout_hash


def test_file_backed_single_process(tmp_path: Path) -> None:
    m = Metrics()
    m.reg.open(tmp_path)
    try:
        m.plain.inc(3)
        # One file per process: named by pid plus a random part (pids get recycled).
        [path] = tmp_path.glob(f"{os.getpid()}-*.metrics")
        magic, layout, pid = struct.unpack_from("<8s8sq", path.read_bytes())
        assert magic == b"CPSMET01"
        assert layout == m.reg.layout_hash
        assert pid == os.getpid()
        assert parse(m.reg.render())[("t_plain_total", ())] == 3
    finally:
        m.reg.close()


def test_reopening_in_memory_forgets_the_directory(tmp_path: Path) -> None:
    m = Metrics()
    m.reg.open(tmp_path)
    m.plain.inc(5)
    m.reg.open(None)
    m.plain.inc(1)
    assert parse(m.reg.render())[("t_plain_total", ())] == 1


# ------------------------------------------------------------------ several real processes

HELPER = '''
"""Declares the same metric set as the test's Metrics class, in a child process."""
import os
import sys
from pathlib import Path

from edge.metrics import Registry

REG = Registry()
hits = REG.counter(os.environ.get("T_HITS_NAME", "t_hits_total"), "Hits by kind.", "kind",
                   ("a", "b"))
plain = REG.counter("t_plain_total", "A counter without labels.")
live = REG.gauge("t_live", "Summed over live processes.")
peak = REG.gauge("t_peak", "Max over live processes.", mode="max")
mode = REG.gauge("t_mode", "A labelled gauge.", label="mode", values=("x", "y"))
lat = REG.histogram("t_latency_seconds", "Latency.", (0.01, 0.001))

if __name__ == "__main__":
    directory, n, stay = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "stay"
    REG.open(directory)
    hits.inc(10 * n, "a")
    hits.inc(n, "b")
    plain.inc()
    live.set(n)
    peak.set(100 * n)
    mode.set(1, "x")
    lat.observe_ns(2_000_000 * n)
    print(os.getpid(), flush=True)
    if stay:
        sys.stdin.read()  # until the parent closes our stdin
'''


def load_helper(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"cps_metrics_helper_{os.getpid()}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def spawn(helper: Path, directory: Path, n: int, stay: bool,
          env_extra: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], int]:
    env = {k: v for k, v in os.environ.items() if k != "T_HITS_NAME"}
    env.update(PYTHONPATH=str(ROOT), **(env_extra or {}))
    proc = subprocess.Popen([sys.executable, str(helper), str(directory), str(n),
                             "stay" if stay else "exit"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                            cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip().isdigit(), f"child failed to start: {line!r}"
    return proc, int(line)


def test_multi_process_aggregation(tmp_path: Path) -> None:
    helper = tmp_path / "metrics_helper.py"
    helper.write_text(HELPER)
    directory = tmp_path / "metrics"
    parent = load_helper(helper)
    parent.REG.open(directory)
    children: list[subprocess.Popen[str]] = []
    try:
        parent.hits.inc(1, "a")
        parent.live.set(5)
        parent.peak.set(50)
        pids = []
        for n in (1, 2, 3):
            proc, pid = spawn(helper, directory, n, stay=True)
            children.append(proc)
            pids.append(pid)
            assert pid == proc.pid
        # Same size, different layout (another metric set): must never be summed.
        foreign, foreign_pid = spawn(helper, directory, 1000, stay=False,
                                     env_extra={"T_HITS_NAME": "t_other_total"})
        assert foreign.wait(timeout=30) == 0
        # Junk that merely looks like a metrics file.
        (directory / "424242.metrics").write_bytes(b"garbage")
        (directory / "434343.metrics").write_bytes(os.urandom(4096))
        (directory / "notes.txt").write_bytes(b"x" * 100)

        names = {p.name for p in directory.iterdir()}
        for pid in (*pids, foreign_pid, os.getpid()):
            assert any(n.startswith(f"{pid}-") and n.endswith(".metrics") for n in names)

        # (a) all three children alive.
        s = parse(parent.REG.render())
        assert s[("t_hits_total", (("kind", "a"),))] == 1 + 10 * (1 + 2 + 3)
        assert s[("t_hits_total", (("kind", "b"),))] == 1 + 2 + 3
        assert s[("t_plain_total", ())] == 3
        assert s[("t_live", ())] == 5 + 1 + 2 + 3
        assert s[("t_peak", ())] == 300
        assert s[("t_mode", (("mode", "x"),))] == 3
        assert s[("t_latency_seconds_bucket", (("le", "0.001"),))] == 0
        assert s[("t_latency_seconds_bucket", (("le", "0.01"),))] == 3
        assert s[("t_latency_seconds_bucket", (("le", "+Inf"),))] == 3
        assert s[("t_latency_seconds_count", ())] == 3
        assert s[("t_latency_seconds_sum", ())] == pytest.approx(0.012)
        assert not any(name.startswith("t_other") for name, _ in s)

        # (b) the children exit: counters and histograms keep their counts, gauges drop them.
        for proc in children:
            assert proc.stdin is not None
            proc.stdin.close()
            assert proc.wait(timeout=30) == 0  # reaped: no zombie counts as alive
        s = parse(parent.REG.render())
        assert s[("t_hits_total", (("kind", "a"),))] == 61
        assert s[("t_hits_total", (("kind", "b"),))] == 6
        assert s[("t_plain_total", ())] == 3
        assert s[("t_live", ())] == 5
        assert s[("t_peak", ())] == 50
        assert s[("t_mode", (("mode", "x"),))] == 0
        assert s[("t_latency_seconds_count", ())] == 3
        assert s[("t_latency_seconds_sum", ())] == pytest.approx(0.012)

        # The parent's own updates are seen at once (shared memory, no flush).
        parent.plain.inc(10)
        assert parse(parent.REG.render())[("t_plain_total", ())] == 13
    finally:
        for proc in children:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        parent.REG.close()
