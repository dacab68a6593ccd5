"""What the hand-off ring costs the request path, measured where throughput runs cannot.

A ring append is under a microsecond, while one redirect costs ~40-110 µs on
these shared 2-core machines and throughput runs vary by ±10 % from run to run:
``./bench.sh --ablations`` cannot resolve it.  This harness times the request
path's share of click delivery directly: ``Deliverer.submit`` of real-sized
click records (600 bytes, as the edge emits them), with a delivery round after
every 2,000 (the buffer taken, the ring released, as the delivery loop does),
once with the ring in a spool directory on disk and once without it
(``CPS_HANDOFF_RING_BYTES=0``).  The two variants alternate in 31 rounds, so
both see the same machine; the table gives medians and the difference.

    python -m bench.handoff [--rounds 31] [--per-round 100000] [--dir var/bench-handoff]
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report
from contracts.records import Record
from edge import telemetry
from edge.delivery.deliverer import Deliverer
from edge.delivery.ring import HandoffRing, NoRing

BATCH = 2000
RING_BYTES = 64 * 1024 * 1024


def click_record(n: int) -> Record:
    value = (b'{"version":1,"promoter_id":"p17","channel_id":"live","position_id":null,'
             b'"shop_id":"shop-3","product_id":"42","sub_ids":[],"target":'
             b'"https://shop.example.com/item/42?src=live","link_sig":"' + b"ab" * 32 +
             b'","link_kid":"k1","link_exp":1900000000,"raw_query":null,"click_id":"'
             + b"%028x" % n + b'","ts":1764800000000,"verdict":"valid","reason":"",'
             b'"buyer_key":"Zm9vYmFyYmF6cXV4cXV1eA","ip":"10.1.2.3","user_agent":'
             b'"Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) '
             b'Chrome/126.0.0.0 Mobile Safari/537.36","referer":""}')
    return (1_764_800_000_000 + n, b"Zm9vYmFyYmF6cXV4cXV1eA", value)


def _deliverer(ring: HandoffRing | NoRing) -> Deliverer:
    # submit() touches only the buffer and the ring; the sinks are never called here.
    deliverer = Deliverer(None, None, None, max_events=50_000,  # type: ignore[arg-type]
                          batch_events=BATCH, probe_interval_s=1.0)
    deliverer.use_ring(ring)
    return deliverer


def _round(deliverer: Deliverer, records: list[Record]) -> float:
    """ns per submit, a delivery round (take the buffer, release it) every BATCH clicks."""
    submit = deliverer.submit
    ring = deliverer.ring
    gc.disable()
    started = time.perf_counter_ns()
    for start in range(0, len(records), BATCH):
        for record in records[start:start + BATCH]:
            submit(record)
        taken = deliverer._buf
        deliverer._buf = type(taken)()
        ring.release(len(taken))
    elapsed = time.perf_counter_ns() - started
    gc.enable()
    return elapsed / len(records)


def measure(rounds: int, per_round: int, folder: Path) -> dict[str, Any]:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    records = [click_record(n) for n in range(per_round)]
    telemetry.REGISTRY.open(None)  # the deliverer's gauges need their slots
    ring = HandoffRing(folder / "ring", RING_BYTES)
    variants = {"ring off": _deliverer(NoRing()), "ring on (ext4 spool dir)": _deliverer(ring)}
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(3):  # warm-up: the ring's pages are touched once (first lap faults them in)
        for deliverer in variants.values():
            _round(deliverer, records)
    for n in range(rounds):
        order = list(variants.items()) if n % 2 == 0 else list(variants.items())[::-1]
        for name, deliverer in order:
            samples[name].append(_round(deliverer, records))
    ring.close(remove=True)
    shutil.rmtree(folder, ignore_errors=True)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    return {"rounds": rounds, "per_round": per_round, "record_bytes": len(records[0][2]),
            "samples_ns": samples, "median_ns": medians,
            "ring_cost_ns": medians["ring on (ext4 spool dir)"] - medians["ring off"]}


def render(result: dict[str, Any], command: str) -> str:
    mach = report.machine()
    lines = [f"## {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: hand-off ring cost on the request path",
             "", f"Command: `{command}`  ",
             f"Machine: {mach['cpu']}, {mach['cores']} cores, Linux {mach['kernel']}, Python "
             f"{mach['python']}.", "",
             f"`Deliverer.submit` of {result['record_bytes']}-byte click records, a delivery "
             f"round every {BATCH}; {result['rounds']} alternating rounds of "
             f"{result['per_round']:,} clicks per variant.", "",
             "| variant | ns per click, median (min–max) |", "|---|---|"]
    for name, values in result["samples_ns"].items():
        lines.append(f"| {name} | {statistics.median(values):,.0f} "
                     f"({min(values):,.0f}–{max(values):,.0f}) |")
    lines += ["", f"**The ring costs {result['ring_cost_ns'] / 1000:.2f} µs per click** "
              "(target: under 2 µs).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.handoff", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--per-round", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=Path("var/bench-handoff"))
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    result = measure(args.rounds, args.per_round, args.dir)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = Path(__file__).with_name("out") / f"handoff-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(result, out / "results.json")
    _plot(result, out / "handoff.png")
    text = render(result, "python -m bench.handoff " + " ".join(argv or []))
    print(text)
    if not args.no_record:
        report.append_results_md(text + f"\nFiles: `{out}` (results.json, handoff.png).\n")
    return 0


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    fig, axis = pyplot.subplots(figsize=(7, 3.5))
    names = list(result["samples_ns"])
    axis.boxplot([result["samples_ns"][n] for n in names], tick_labels=names, vert=False)
    axis.set_xlabel("ns per click (Deliverer.submit + amortized release)")
    axis.set_title("hand-off ring cost on the request path")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
