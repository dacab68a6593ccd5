"""``cps-bench``: throughput and latency of one edge worker against a bare-302 baseline.

    cps-bench [--runs 5] [--duration 10] [--curve 10,25,50,75,90] [--soak 300] [--fault]

One run starts a Tansu broker and redis-server, then, with the server under
test pinned to core 0 and wrk (plus broker and Redis) on core 1:

1. the baseline (``bench.baseline``: a fixed 302 + Set-Cookie, same server
   settings) for ``--runs`` runs of ``--duration`` seconds at full speed;
2. the edge, the same way, on freshly minted links from many promoters and
   requests from many buyers; then every click is counted back out of Kafka
   (a run whose clicks don't all arrive does not count);
3. latency at fixed offered rates (percent of the edge's median maximum), for
   the edge and for the baseline at the same rates;
4. optionally a soak at 80 % (RSS sampled throughout) and a broker kill under
   load (on an S3-backed broker, so the kill loses nothing of its own).

It prints the tables, writes ``results.json`` and ``latency.png`` under
``--out``, and appends everything, with the command and machine, to
``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import clicks, report, wrk
from bench.servers import PinnedServer
from contracts.keys import generate_ring
from contracts.links import mint_link
from contracts.targets import AllowList
from contracts.topics import CLICKS_TOPIC
from devstack.stack import LocalStack

SERVER_CORE = 0
LOAD_CORE = 1
ALLOWED = "shop.example.com"
FALLBACK_UAS = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Mobile/15E148 MicroMessenger/8.0.47(0x18002f2c) NetType/WIFI Language/zh_CN",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.6099.144 Mobile Safari/537.36",
]


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _pin(pid: int | None, core: int) -> None:
    """Move a whole process (all its threads) to ``core``."""
    if pid is not None:
        subprocess.run(["taskset", "-a", "-p", "-c", str(core), str(pid)],
                       capture_output=True, check=False)


def user_agents() -> list[str]:
    path = Path(__file__).with_name("user_agents.txt")
    if path.exists():
        uas = [line.strip() for line in path.read_text().splitlines()
               if line.strip() and not line.startswith("#")]
        if uas:
            return uas
    return FALLBACK_UAS


def mint_paths(ring: Any, links: int, promoters: int) -> list[str]:
    allow = AllowList.parse(ALLOWED)
    out = []
    for i in range(links):
        url = mint_link("http://edge.bench/c", ring=ring, promoter_id=f"promoter-{i % promoters}",
                        channel_id=f"live-{i % 17}", target=f"https://{ALLOWED}/item/{i}?src=live",
                        ttl_seconds=86400, product_id=str(i), position_id=f"pos-{i % 5}",
                        allow=allow)
        out.append("/" + url.split("/", 3)[3])
    return out


class Bench:
    def __init__(self, args: argparse.Namespace, out: Path) -> None:
        self.args = args
        self.out = out
        self.link_ring = generate_ring(("b1",))
        self.cookie_ring = generate_ring(("b1",))
        self.paths = mint_paths(self.link_ring, args.links, args.promoters)
        self.uas = user_agents()
        self.script = wrk.write_script(out / "load.lua", self.paths, self.uas,
                                       connections=args.connections)

    def edge_env(self, stack: LocalStack, spool: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CPS_")}
        env.update({
            "CPS_LINK_KEYS": self.link_ring.to_text(),
            "CPS_COOKIE_KEYS": self.cookie_ring.to_text(),
            "CPS_ALLOWED_TARGET_HOSTS": ALLOWED,
            "CPS_KAFKA_BOOTSTRAP": stack.broker.bootstrap,
            "CPS_REDIS_URL": stack.redis.url,
            "CPS_SPOOL_DIR": str(spool),
            # wrk is "the load balancer": it sends each buyer's address.
            "CPS_FORWARDED_HOPS": "1",
            "CPS_LOG_LEVEL": "warning",
        })
        env.update(dict(kv.split("=", 1) for kv in self.args.edge_env))
        return env

    def pin_stack(self, stack: LocalStack) -> None:
        for proc in (stack.broker.process, stack.redis.process):
            _pin(proc.pid, LOAD_CORE)
        if stack.s3 is not None:
            _pin(stack.s3.process.pid, LOAD_CORE)

    def measure(self, server: PinnedServer, runs: int) -> list[dict[str, Any]]:
        a = self.args
        wrk.run(server.url, self.script, seconds=a.warmup, connections=a.connections,
                core=LOAD_CORE)
        results = []
        for n in range(runs):
            with server.usage() as usage:
                r = wrk.run(server.url, self.script, seconds=a.duration,
                            connections=a.connections, core=LOAD_CORE)
            row = {**r.as_dict(), "cpu_percent": usage.cpu_percent, "rss_mb_max": usage.rss_mb_max}
            _log(f"  {server.name} run {n + 1}/{runs}: {r.rps:,.0f} req/s, p99 {r.p99_ms:.2f} ms, "
                 f"errors {r.errors}, CPU {usage.cpu_percent:.0f}%, RSS {usage.rss_mb_max:.0f} MB")
            results.append(row)
            time.sleep(1)
        return results

    def paced(self, server: PinnedServer, rate: float, seconds: int, *,
              tag: str) -> dict[str, Any]:
        # Each connection waits its delay *after* the previous answer, so its period
        # is delay + latency: many connections keep latency a small part of it.
        conns = self.args.paced_connections
        script = wrk.write_script(self.out / f"paced-{int(rate)}.lua", self.paths, self.uas,
                                  rate=rate, connections=conns, seed=int(rate))
        r = wrk.run(server.url, script, seconds=seconds, connections=conns,
                    core=LOAD_CORE, offered_rps=rate)
        _log(f"  {tag} {server.name} offered {rate:,.0f}: achieved {r.rps:,.0f} req/s, "
             f"p50 {r.p50_ms:.2f} p99 {r.p99_ms:.2f} max {r.max_ms:.2f} ms, errors {r.errors}")
        return r.as_dict()

    # -- the scenarios ------------------------------------------------------

    def throughput_and_curve(self, results: dict[str, Any]) -> None:
        a = self.args
        with LocalStack(self.out / "stack", topics={CLICKS_TOPIC: a.partitions}) as stack:
            self.pin_stack(stack)
            env = self.edge_env(stack, self.out / "spool")
            _log(f"baseline ({a.server}): {a.runs} x {a.duration}s")
            base = PinnedServer.baseline(a.server, env, SERVER_CORE, self.out).start()
            try:
                base_runs = self.measure(base, a.runs)
            finally:
                base.stop()
            _log(f"edge ({a.server}): {a.runs} x {a.duration}s")
            edge = PinnedServer.edge(a.server, env, SERVER_CORE, self.out).start(
                ready_path="/readyz")
            try:
                edge_runs = self.measure(edge, a.runs)
                edge_max = statistics.median(r["rps"] for r in edge_runs)
                curve = []
                for pct in a.curve:
                    p = self.paced(edge, edge_max * pct / 100, a.curve_duration, tag="curve")
                    curve.append({**p, "target": "edge", "percent": pct})
                m = clicks.wait_delivered(lambda: clicks.parse_metrics(edge.get("/metrics")[1]))
            finally:
                edge.stop()
            _log("counting every click back out of Kafka ...")
            check = clicks.check(stack.broker.bootstrap, m)
            _log(check.summary())
            base = PinnedServer.baseline(a.server, env, SERVER_CORE, self.out).start()
            try:
                for pct in a.curve:
                    p = self.paced(base, edge_max * pct / 100, a.curve_duration, tag="curve")
                    curve.append({**p, "target": "baseline", "percent": pct})
            finally:
                base.stop()
        base_med = statistics.median(r["rps"] for r in base_runs)
        results["targets"] = {"baseline": {"runs": base_runs}, "edge": {"runs": edge_runs}}
        results["curve"] = curve
        results["ratio_median"] = edge_max / base_med
        results["clicks"] = {"ok": check.ok, "summary": check.summary(),
                             "served": dict(check.served), "kafka_records": check.kafka.records,
                             "kafka_distinct_valid": check.kafka.distinct_valid,
                             "kafka_duplicates": check.kafka.duplicate_valid}

    def ablations(self, results: dict[str, Any]) -> None:
        """The edge with one feature off at a time: what each costs per request."""
        a = self.args
        variants = [("rate limit off", {"CPS_RATE_LIMIT_PER_S": "0"}, False),
                    ("duplicate window off", {"CPS_DUPLICATE_WINDOW_S": "0"}, False),
                    ("hand-off ring off", {"CPS_HANDOFF_RING_BYTES": "0"}, False),
                    ("Kafka delivery off", {}, True)]
        rows: list[dict[str, Any]] = []
        with LocalStack(self.out / "ablation-stack", topics={CLICKS_TOPIC: a.partitions}) as stack:
            self.pin_stack(stack)
            for name, extra, no_delivery in variants:
                env = {**self.edge_env(stack, self.out / "ablation-spool"), **extra}
                make = PinnedServer.edge_without_delivery if no_delivery else PinnedServer.edge
                server = make(a.server, env, SERVER_CORE, self.out).start(ready_path="/readyz")
                try:
                    _log(f"ablation: {name}")
                    runs = self.measure(server, a.ablation_runs)
                finally:
                    server.stop()
                rows.append({"variant": name, "runs": runs})
        full = statistics.median(r["rps"] for r in results["targets"]["edge"]["runs"])
        for row in rows:
            rps = statistics.median(r["rps"] for r in row["runs"])
            row["rps"] = rps
            row["us_per_request_saved"] = 1e6 / full - 1e6 / rps
        results["ablations"] = rows

    def soak(self, results: dict[str, Any], edge_max: float) -> None:
        a = self.args
        rate = edge_max * 0.8
        _log(f"soak: {a.soak}s at {rate:,.0f} req/s (80% of max)")
        with LocalStack(self.out / "soak-stack", topics={CLICKS_TOPIC: a.partitions}) as stack:
            self.pin_stack(stack)
            edge = PinnedServer.edge(a.server, self.edge_env(stack, self.out / "soak-spool"),
                                     SERVER_CORE, self.out).start(ready_path="/readyz")
            try:
                with edge.usage(interval=5) as usage:
                    r = self.paced(edge, rate, a.soak, tag="soak")
                m = clicks.wait_delivered(lambda: clicks.parse_metrics(edge.get("/metrics")[1]))
            finally:
                edge.stop()
            check = clicks.check(stack.broker.bootstrap, m)
            _log(check.summary())
        samples = usage.rss_mb_samples
        results["soak"] = {**r, "seconds": a.soak, "rss_mb": samples,
                           "rss_mb_first": samples[0][1] if samples else None,
                           "rss_mb_last": samples[-1][1] if samples else None,
                           "rss_mb_max": usage.rss_mb_max, "clicks_ok": check.ok,
                           "clicks": check.summary()}

    def fault(self, results: dict[str, Any], edge_max: float) -> None:
        """Kill the broker under load: 302s continue, latency holds, nothing is lost."""
        a = self.args
        rate = edge_max * 0.5
        _log(f"fault: broker killed under {rate:,.0f} req/s (S3-backed broker)")
        # The S3-backed broker stores every produce batch as an object in moto (a
        # Python server): one partition and big, lingering batches keep them few,
        # or reading the clicks back takes longer than the test itself.
        with LocalStack(self.out / "fault-stack", topics={CLICKS_TOPIC: 1},
                        storage="s3") as stack:
            self.pin_stack(stack)
            env = {**self.edge_env(stack, self.out / "fault-spool"),
                   "CPS_DELIVERY_LINGER_MS": "100"}
            edge = PinnedServer.edge(a.server, env, SERVER_CORE, self.out).start(
                ready_path="/readyz")
            phases: dict[str, dict[str, Any]] = {}
            try:
                phases["before"] = self.paced(edge, rate, a.fault_phase, tag="fault")
                stack.broker.kill()
                phases["broker down"] = self.paced(edge, rate, a.fault_phase, tag="fault")
                stack.broker.restart()
                _pin(stack.broker.process.pid, LOAD_CORE)
                phases["recovered"] = self.paced(edge, rate, a.fault_phase, tag="fault")
                m = _wait_drained(edge)
            finally:
                edge.stop()
            check = clicks.check(stack.broker.bootstrap, m, failover=True)
            _log(check.summary())
        recovered = check.ok
        results["fault"] = {
            "offered_rps": rate, "phases": phases,
            "p99_ratio_down_vs_before":
                phases["broker down"]["p99_ms"] / phases["before"]["p99_ms"],
            "all_302": all(p["errors"] == 0 for p in phases.values()),
            "clicks_ok": recovered, "duplicates": check.kafka.duplicate_valid,
            "clicks": check.summary(),
            "delivered": {k: v for k, v in m.items() if "delivered" in k or "replayed" in k}}


def _wait_drained(edge: PinnedServer, timeout: float = 300) -> clicks.Metrics:
    deadline = time.monotonic() + timeout
    while True:
        m = clicks.parse_metrics(edge.get("/metrics")[1])
        if (m.get('cps_edge_delivery_mode{mode="kafka"}') == 1
                and m.get("cps_edge_fallback_pending_records") == 0
                and m.get("cps_edge_spool_pending_records") == 0
                and m.get("cps_edge_buffer_events") == 0):
            return m
        if time.monotonic() > deadline:
            raise TimeoutError("the edge did not drain its fallback in time")
        time.sleep(0.5)


def render(results: dict[str, Any], command: str) -> str:
    mach = results["machine"]
    edge_runs = results["targets"]["edge"]["runs"]
    base_runs = results["targets"]["baseline"]["runs"]
    ratios = [e["rps"] / b["rps"] for e, b in zip(edge_runs, base_runs, strict=False)]
    p50_curve = [p for p in results["curve"] if p["target"] == "edge" and p["percent"] == 50]
    lines = [
        f"## {mach['date']}: {results['server']}, {len(edge_runs)} x {results['duration']}s\n",
        f"Command: `{command}`  ",
        f"Machine: {mach['cpu']}, {mach['cores']} cores, Linux {mach['kernel']}, Python "
        f"{mach['python']}, granian {mach['granian']}, uvicorn {mach['uvicorn']}, "
        f"{mach['wrk']}; server pinned to core {SERVER_CORE}, wrk + broker + Redis on core "
        f"{LOAD_CORE}.\n",
        report.throughput_table(results["targets"]),
        f"**Edge / baseline: {results['ratio_median']:.1%}** of the baseline's median "
        f"(run-by-run {min(ratios):.1%}–{max(ratios):.1%}).  ",
        f"Clicks: {results['clicks']['summary']}.\n",
        "Latency at fixed offered rates (percent of the edge's median maximum):\n",
        report.curve_table(results["curve"]),
    ]
    if p50_curve:
        lines.append(f"p99 at 50 % of the edge's maximum: **{p50_curve[0]['p99_ms']:.2f} ms**.\n")
    if "ablations" in results:
        base_us = 1e6 / statistics.median(r["rps"] for r in base_runs)
        edge_us = 1e6 / statistics.median(r["rps"] for r in edge_runs)
        rows = "\n".join(
            f"| {row['variant']} | {fmt_rps_runs(row['runs'])} "
            f"| {row['us_per_request_saved']:.1f} |" for row in results["ablations"])
        lines.append(
            "Where the edge's time goes (per request, one core): baseline server "
            f"{base_us:.1f} µs, full edge {edge_us:.1f} µs, so the edge's own work is "
            f"{edge_us - base_us:.1f} µs. With one feature off:\n\n"
            "| edge variant | req/s median (min–max) | µs/request saved |\n|---|---|---|\n"
            f"{rows}\n")
    if "soak" in results:
        s = results["soak"]
        lines.append(
            f"Soak: {s['seconds']}s at {s['offered_rps']:,.0f} req/s (80 %): achieved "
            f"{s['rps']:,.0f} req/s, p99 {s['p99_ms']:.2f} ms, errors {s['errors']}; worker RSS "
            f"{s['rss_mb_first']:.0f} MB at start, {s['rss_mb_last']:.0f} MB at end, "
            f"{s['rss_mb_max']:.0f} MB max. {s['clicks']}.\n")
    if "fault" in results:
        f = results["fault"]
        rows = "\n".join(
            f"| {name} | {p['rps']:,.0f} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} "
            f"| {p['max_ms']:.2f} | {p['errors']} |" for name, p in f["phases"].items())
        lines.append(
            f"Broker killed under load ({f['offered_rps']:,.0f} req/s offered, "
            "S3-backed Tansu):\n\n"
            "| phase | req/s | p50 ms | p99 ms | max ms | errors |\n|---|---|---|---|---|---|\n"
            f"{rows}\n\np99 with the broker down = {f['p99_ratio_down_vs_before']:.2f}x "
            f"before. {f['clicks']}.\n")
    for name, why in results.get("failed", {}).items():
        lines.append(f"**{name} failed**: {why}\n")
    lines.append(f"Files: `{results['out']}` (results.json, latency.png).\n")
    return "\n".join(lines)


def fmt_rps_runs(runs: list[dict[str, Any]]) -> str:
    return report.fmt_rps([r["rps"] for r in runs])


def _percent_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cps-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", choices=("granian", "uvicorn"), default="granian")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--duration", type=int, default=10, help="seconds per run")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--connections", type=int, default=64,
                   help="connections for the full-speed runs")
    p.add_argument("--paced-connections", type=int, default=256,
                   help="connections for fixed-rate runs (curve, soak, fault)")
    p.add_argument("--links", type=int, default=2000)
    p.add_argument("--promoters", type=int, default=200)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--curve", type=_percent_list, default=[10, 25, 50, 75, 90],
                   help="offered rates, percent of the edge's max")
    p.add_argument("--curve-duration", type=int, default=10)
    p.add_argument("--soak", type=int, default=0, help="seconds at 80%% (0: skip)")
    p.add_argument("--ablations", action="store_true",
                   help="also measure the edge with rate limit / duplicates / delivery off")
    p.add_argument("--ablation-runs", type=int, default=3)
    p.add_argument("--fault", action="store_true", help="kill the broker under load")
    p.add_argument("--fault-phase", type=int, default=15)
    p.add_argument("--edge-env", action="append", default=[], metavar="CPS_X=VALUE",
                   help="extra edge setting for this run (repeatable)")
    p.add_argument("--out", type=Path)
    p.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = p.parse_args(argv)
    if (os.cpu_count() or 1) < 2:
        print("cps-bench: needs two cores (server on one, load generator on the other)",
              file=sys.stderr)
        return 2
    _pin(os.getpid(), LOAD_CORE)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = args.out or Path(__file__).with_name("out") / stamp
    out.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(out)
    command = "cps-bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    results: dict[str, Any] = {"machine": report.machine(), "server": args.server,
                               "duration": args.duration, "out": str(out), "command": command}
    bench = Bench(args, out)
    bench.throughput_and_curve(results)
    report.write_json(results, out / "results.json")
    edge_max = statistics.median(r["rps"] for r in results["targets"]["edge"]["runs"])
    optional: list[tuple[str, object, Callable[[], None]]] = [
        ("ablations", args.ablations, lambda: bench.ablations(results)),
        ("soak", args.soak, lambda: bench.soak(results, edge_max)),
        ("fault", args.fault, lambda: bench.fault(results, edge_max))]
    for name, wanted, scenario in optional:
        if not wanted:
            continue
        # A failed optional scenario is reported, and the measurements already
        # made are kept: they cost minutes.
        try:
            scenario()
        except Exception as err:  # reported in the results and the exit status
            _log(f"{name} failed: {type(err).__name__}: {err}")
            results.setdefault("failed", {})[name] = f"{type(err).__name__}: {err}"
        report.write_json(results, out / "results.json")
    report.plot(results, out / "latency.png")
    text = render(results, command)
    print("\n" + text)
    if not args.no_record:
        report.append_results_md(text)
        _log(f"appended to {report.RESULTS_MD}")
    counted = results["clicks"]["ok"] and results.get("soak", {}).get("clicks_ok", True) \
        and results.get("fault", {}).get("clicks_ok", True)
    if not counted:
        print("cps-bench: clicks did not all arrive: these figures do not count", file=sys.stderr)
        return 1
    if results.get("failed"):
        print(f"cps-bench: scenarios failed: {results['failed']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
