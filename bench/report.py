"""Benchmark output: the printed table, results JSON, the plot and bench/RESULTS.md."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

RESULTS_MD = Path(__file__).with_name("RESULTS.md")


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
        wrk_version = (wrk.stdout or wrk.stderr).split("[")[0].strip()
    except OSError:  # benchmarks that do not drive wrk run without it
        wrk_version = "-"

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "-"

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "granian": version("granian"),
        "uvicorn": version("uvicorn"),
        "aiokafka": version("aiokafka"),
        "wrk": wrk_version,
    }


def median_range(values: Sequence[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def fmt_rps(values: Sequence[float]) -> str:
    med, lo, hi = median_range(values)
    return f"{med:,.0f} ({lo:,.0f}–{hi:,.0f})"


def fmt_ms(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.2f}"


def throughput_table(targets: dict[str, dict[str, Any]]) -> str:
    head = ("| target | req/s median (min–max) | p50 ms | p90 ms | p99 ms | max ms | errors "
            "| CPU % | RSS MB max |\n|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for name, t in targets.items():
        runs = t["runs"]
        rows.append(
            f"| {name} | {fmt_rps([r['rps'] for r in runs])} "
            f"| {fmt_ms([r['p50_ms'] for r in runs])} "
            f"| {fmt_ms([r['p90_ms'] for r in runs])} | {fmt_ms([r['p99_ms'] for r in runs])} "
            f"| {fmt_ms([r['max_ms'] for r in runs])} | {sum(r['errors'] for r in runs)} "
            f"| {statistics.median(r['cpu_percent'] for r in runs):.0f} "
            f"| {max(r['rss_mb_max'] for r in runs):.0f} |")
    return head + "\n".join(rows) + "\n"


def curve_table(curve: list[dict[str, Any]]) -> str:
    head = ("| target | offered req/s | achieved req/s | p50 ms | p90 ms | p99 ms | max ms "
            "| errors |\n|---|---|---|---|---|---|---|---|\n")
    rows = [f"| {p['target']} | {p['offered_rps']:,.0f} ({p['percent']}% of edge max) "
            f"| {p['rps']:,.0f} | {p['p50_ms']:.2f} | {p['p90_ms']:.2f} | {p['p99_ms']:.2f} "
            f"| {p['max_ms']:.2f} | {p['errors']} |" for p in curve]
    return head + "\n".join(rows) + "\n"


def plot(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for target, style in (("edge", "o-"), ("baseline", "s--")):
        points = [p for p in results.get("curve", []) if p["target"] == target]
        if not points:
            continue
        x = [p["rps"] for p in points]
        ax1.plot(x, [p["p50_ms"] for p in points], style, label=f"{target} p50")
        ax1.plot(x, [p["p99_ms"] for p in points], style, label=f"{target} p99", alpha=0.7)
    ax1.axhline(2.0, color="red", linewidth=0.8, linestyle=":", label="2 ms target")
    ax1.set_xlabel("achieved req/s (one worker, one core)")
    ax1.set_ylabel("latency ms")
    ax1.set_title("Latency vs offered rate")
    ax1.legend()
    ax1.grid(alpha=0.3)
    names = list(results["targets"])
    meds = [median_range([r["rps"] for r in results["targets"][n]["runs"]]) for n in names]
    ax2.bar(names, [m[0] for m in meds],
            yerr=[[m[0] - m[1] for m in meds], [m[2] - m[0] for m in meds]], capsize=6,
            color=["#999", "#2a7"][: len(names)])
    ax2.set_ylabel("req/s (median, min–max)")
    ratio = results.get("ratio_median")
    ax2.set_title("Max throughput" + (f": edge = {ratio:.0%} of baseline" if ratio else ""))
    ax2.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_json(results: dict[str, Any], path: Path) -> Path:
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return path


def append_results_md(section: str) -> None:
    if not RESULTS_MD.exists():
        RESULTS_MD.write_text(
            "# Benchmark results\n\nEvery `cps-bench` run appends its tables, command and machine "
            "here (newest last). Compare runs through the edge/baseline ratio measured in the "
            "same run: the machines are shared and noisy.\n")
    with RESULTS_MD.open("a") as f:
        f.write("\n" + section)
