"""The billing run over a million order lines, against a COPY of its ledger rows.

    python -m bench.billing [--lines 1000000] [--database postgresql|sqlite|both]
                            [--sqlite-lines N] [--no-record] [--out DIR]

One run per database, on a fresh database (PostgreSQL at 127.0.0.1:5432 user postgres,
``cps_bench_<random>``, dropped afterwards; SQLite: a file in the output directory):

1. **world** (not timed): 20 shops in CPS, 8 channels, 300 promoters; every rate level
   (shop generic with an edited version, shop category, generic product, targeted
   product, targeted base per shop and platform-wide, group-leader activities with
   members), a platform share (with a channel override), channel fees, fans shares,
   channel rates (per category and channel-wide), one T+7 schedule.  Then ``--lines``
   order lines: ~400,000 orders of 1-4 items paid on DAY0, decided 80 % cps, 10 %
   self-operated, 10 % none (``COPY`` on PostgreSQL, ``executemany`` on SQLite);
2. **accrual**: ``run_billing`` as of DAY0 + 1 day: reconcile, rate lookup, allocation,
   freeze and pending transfers, charge requests, reconcile;
3. (not timed) every charge ``charged`` in one UPDATE, as if the funds service had
   answered, and every order ``received`` on DAY0 + 1 day;
4. **settlement**: ``run_billing`` as of DAY0 + 16 days: every pending posted (T+15 after
   received; T+7 for one channel's promoters), payouts, reconciliation before and after;
5. **baseline**: the rows the two runs wrote to ``ledger_transfers``, dumped to a file
   (not timed) and loaded again with ``COPY ... FROM STDIN`` into ``bench_transfers``
   (``CREATE TABLE ... (LIKE ledger_transfers INCLUDING ALL)``: same columns, checks
   and indexes) in the same database; on SQLite one ``executemany`` into a copy of the
   table with the same indexes.

Prints a table (phase, seconds, lines/s, rows written, vs baseline), writes
``results.json`` and ``billing.png`` into ``bench/out/billing-<stamp>/`` and appends a
section to ``bench/RESULTS.md``.  Targets (issue 8): <= 60 s for 1,000,000 lines on
PostgreSQL, and within 3x of the baseline.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import Engine

import ledger_db
from bench import report
from billing_batch import master_data
from billing_batch.run import RunOptions, RunSummary, run_billing
from billing_batch.schedule import ScheduleMode, ScheduleRule
from ledger_db import master_data as ledger_master
from ledger_db import schema

DAY_MS = 86_400_000
DAY0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z: every order is paid that day
ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
SHOPS, CHANNELS, PROMOTERS, PRODUCTS, CATEGORIES = 20, 8, 300, 100, 8
WRITTEN_TABLES = ("commission_lines", "ledger_transfers", "ledger_accounts", "billing_charges",
                  "outbox", "payouts", "billing_runs")
CHUNK = 50_000


class BenchError(RuntimeError):
    """The benchmark cannot run (no database, bad arguments); the message says why."""


# -- master data ---------------------------------------------------------------------------

def _ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{n:03d}" for n in range(count)]


SHOP_IDS, CHANNEL_IDS, PROMOTER_IDS = _ids("S", SHOPS), _ids("C", CHANNELS), _ids("P", PROMOTERS)


def product_id(shop: str, n: int) -> str:
    return f"{shop}-p{n:03d}"


def build_world(engine: Engine, shops: int = SHOPS) -> None:
    """Shops, channels, promoters, bases, activities, every rate level, fees, schedules."""
    start = DAY0 - 30 * DAY_MS
    with engine.begin() as conn:
        for shop in SHOP_IDS[:shops]:
            ledger_master.add_shop(conn, shop, now_ms=start)
            ledger_master.join_cps(conn, shop, start)
        for channel in CHANNEL_IDS:
            ledger_master.add_channel(conn, channel, now_ms=start)
        for promoter in PROMOTER_IDS:
            ledger_master.add_promoter(conn, promoter, now_ms=start)
        ledger_master.add_base(conn, "BALL", now_ms=start)  # platform-wide
        for promoter in PROMOTER_IDS[:50]:
            ledger_master.add_base_member(conn, "BALL", promoter)
        for k, shop in enumerate(SHOP_IDS[:shops]):
            _shop_world(conn, k, shop, start)
        _fees(conn, start)
        master_data.set_schedule(conn, ScheduleRule("C001", "promoter", ScheduleMode.DELAY, 7),
                                 now_ms=start)


def _shop_world(conn: sqlalchemy.Connection, k: int, shop: str, start: int) -> None:
    def rule(level: str, rate_bp: int, **scope: Any) -> None:
        master_data.add_rate_rule(conn, level=level, shop_id=shop, rate_bp=rate_bp,
                                  valid_from_ms=start, now_ms=start, **scope)

    generic = master_data.add_rate_rule(conn, level="shop_generic", shop_id=shop,
                                        rate_bp=800, valid_from_ms=start, now_ms=start)
    master_data.edit_rate_rule(conn, generic.rule_id, DAY0 - 5 * DAY_MS,
                               now_ms=DAY0 - 6 * DAY_MS, rate_bp=1000)
    for category in range(4):
        rule("shop_category", 1200 + 100 * category, category_id=f"cat{category}")
    for n in range(30):
        rule("generic_product", 1500, product_id=product_id(shop, n))
    for n in range(5):
        for promoter in PROMOTER_IDS[(k * 7) % 280:(k * 7) % 280 + 6]:
            rule("targeted_product", 2500, product_id=product_id(shop, n), promoter_id=promoter)
    base = f"B{shop}"
    ledger_master.add_base(conn, base, now_ms=start, shop_id=shop)
    for promoter in PROMOTER_IDS[100 + k * 5:100 + k * 5 + 40]:
        ledger_master.add_base_member(conn, base, promoter)
    rule("targeted_base", 1700, base_id=base)  # the whole shop for the base
    for n in range(10, 20):
        rule("targeted_base", 2200, base_id=base, product_id=product_id(shop, n))
    for n in range(20, 25):
        rule("targeted_base", 2100, base_id="BALL", product_id=product_id(shop, n))
    activity = f"A{shop}"
    master_data.add_activity(conn, activity, shop_id=shop, leader_id=PROMOTER_IDS[k],
                             now_ms=start)
    for promoter in PROMOTER_IDS[150 + k * 7:150 + k * 7 + 30]:
        master_data.join_activity(conn, activity, promoter, at_ms=start)
    for n in range(30, 40):
        rule("group_leader", 1800, product_id=product_id(shop, n), activity_id=activity,
             leader_rate_bp=300)


def _fees(conn: sqlalchemy.Connection, start: int) -> None:
    master_data.add_fee_setting(conn, kind="platform_share", bp=1000, valid_from_ms=start,
                                now_ms=start)
    master_data.add_fee_setting(conn, kind="platform_share", bp=800, channel_id="C000",
                                valid_from_ms=start, now_ms=start)
    for k, channel in enumerate(CHANNEL_IDS):
        master_data.add_fee_setting(conn, kind="channel_fee", bp=300 + 50 * k,
                                    channel_id=channel, valid_from_ms=start, now_ms=start)
        if k < 3:
            master_data.add_fee_setting(conn, kind="fans_share", bp=500, channel_id=channel,
                                        valid_from_ms=start, now_ms=start)
        master_data.add_channel_rate(conn, channel_id=channel, rate_bp=300,
                                     valid_from_ms=start, now_ms=start)
        master_data.add_channel_rate(conn, channel_id=channel, rate_bp=450, category_id="cat0",
                                     valid_from_ms=start, now_ms=start)


# -- orders --------------------------------------------------------------------------------

ORDER_COLUMNS = ("order_id", "shop_id", "channel_id", "status", "created_at", "paid_at",
                 "event_ts", "updated_at")
ITEM_COLUMNS = ("order_id", "item_id", "product_id", "category_id", "quantity", "paid_amount",
                "refunded_amount", "refund_pending_amount")
DECISION_COLUMNS = ("order_id", "attribution_type", "promoter_id", "channel_id", "evidence",
                    "reason", "order_created_at", "decided_at", "attempts")


@dataclass(slots=True)
class Chunk:
    orders: list[tuple[Any, ...]]
    items: list[tuple[Any, ...]]
    decisions: list[tuple[Any, ...]]


def generate(lines: int, shops: int = SHOPS, seed: int = 8) -> Iterator[Chunk]:
    """Orders of 1-4 items (2.5 on average) until ``lines`` items; chunks of ~CHUNK lines."""
    rng = random.Random(seed)
    chunk, made, n = Chunk([], [], []), 0, 0
    while made < lines:
        order_id = f"o{n:07d}"
        shop = SHOP_IDS[rng.randrange(shops)]
        channel = CHANNEL_IDS[rng.randrange(CHANNELS)]
        paid = DAY0 + rng.randrange(DAY_MS - 60_000)
        chunk.orders.append((order_id, shop, channel, "paid", paid - 60_000, paid, paid, paid))
        count = min(1 + rng.randrange(4), lines - made)
        for i in range(count):
            k = rng.randrange(PRODUCTS)
            chunk.items.append((order_id, f"i{i + 1}", product_id(shop, k), f"cat{k % CATEGORIES}",
                                1, rng.randrange(500, 50_000), 0, 0))
        made += count
        draw = rng.random()
        kind = "cps" if draw < 0.8 else "self_operated" if draw < 0.9 else "none"
        promoter = PROMOTER_IDS[rng.randrange(PROMOTERS)] if kind == "cps" else None
        chunk.decisions.append((order_id, kind, promoter, channel if kind != "none" else None,
                                {"cps": "click", "self_operated": "fanstype"}.get(kind, "none"),
                                "bench", paid - 60_000, paid + 1_000, 1))
        n += 1
        if len(chunk.items) >= CHUNK:
            yield chunk
            chunk = Chunk([], [], [])
    if chunk.orders:
        yield chunk


def load_orders(engine: Engine, lines: int, shops: int = SHOPS) -> dict[str, int]:
    """Write the generated orders, items and decisions; returns the counts."""
    counts = {"orders": 0, "lines": 0, "decisions": 0}
    with engine.begin() as conn:
        for chunk in generate(lines, shops):
            for table, columns, rows in (("orders", ORDER_COLUMNS, chunk.orders),
                                         ("order_items", ITEM_COLUMNS, chunk.items),
                                         ("attribution_decisions", DECISION_COLUMNS,
                                          chunk.decisions)):
                _bulk(conn, table, columns, rows)
            counts["orders"] += len(chunk.orders)
            counts["lines"] += len(chunk.items)
            counts["decisions"] += len(chunk.decisions)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")  # both dialects: fresh statistics for the planner
    return counts


def _bulk(conn: sqlalchemy.Connection, table: str, columns: Sequence[str],
          rows: Sequence[tuple[Any, ...]]) -> None:
    if conn.dialect.name == "postgresql":
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    marks = ", ".join("?" * len(columns))
    conn.exec_driver_sql(f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608 (constants)
                         f"VALUES ({marks})", list(rows))


# -- phases --------------------------------------------------------------------------------

def count_rows(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {table: int(conn.exec_driver_sql(
                    f"SELECT count(*) FROM {table}").scalar_one())  # noqa: S608 (constants)
                for table in WRITTEN_TABLES}


def server_cpu_s(engine: Engine) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend serving this database (same host)."""
    if engine.dialect.name != "postgresql":
        return {}
    with engine.connect() as conn:
        pids = conn.exec_driver_sql("SELECT pid FROM pg_stat_activity "
                                    "WHERE datname = current_database()").scalars().all()
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # another host, or the backend is gone
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    return out


def _server_delta(engine: Engine, before: dict[int, float]) -> float | None:
    if engine.dialect.name != "postgresql":
        return None  # SQLite runs inside this process: its time is in the run's CPU
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in server_cpu_s(engine).items())


def _timed_run(engine: Engine, as_of_ms: int, batch_size: int) -> dict[str, Any]:
    before = count_rows(engine)
    server_before = server_cpu_s(engine)
    cpu_before = time.process_time()
    started = time.perf_counter()
    summary: RunSummary = run_billing(engine, RunOptions(as_of_ms=as_of_ms,
                                                         batch_size=batch_size))
    seconds = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_before
    server_s = _server_delta(engine, server_before)
    after = count_rows(engine)
    written = {table: after[table] - before[table] for table in WRITTEN_TABLES}
    return {"seconds": seconds, "cpu_s": cpu_s, "server_cpu_s": server_s,
            "written": written, "rows_written": sum(written.values()),
            "summary": {"orders": summary.orders, "lines_accrued": summary.lines_accrued,
                        "lines_without_commission": summary.lines_without_commission,
                        "charges_requested": summary.charges_requested,
                        "transfers": summary.transfers, "payouts": summary.payouts,
                        "amounts": {str(code): amount for code, amount
                                    in summary.amounts.items()},
                        "held": summary.held}}


def mark_charged_and_received(engine: Engine) -> dict[str, int]:
    """What the funds service and order sync would have done between the two runs."""
    received = {"at": DAY0 + DAY_MS}
    with engine.begin() as conn:
        charged = conn.execute(sqlalchemy.text(
            "UPDATE billing_charges SET status = 'charged', updated_at = :at "
            "WHERE status = 'pending'"), received).rowcount
        orders = conn.execute(sqlalchemy.text(
            "UPDATE orders SET status = 'received', received_at = :at, event_ts = :at, "
            "updated_at = :at"), received).rowcount
    return {"charged": charged, "received": orders}


def baseline(engine: Engine, workdir: Path) -> dict[str, Any]:
    """Reload every ledger_transfers row into a same-shaped table: COPY (PG), executemany."""
    if engine.dialect.name == "postgresql":
        return _baseline_pg(engine, workdir)
    return _baseline_sqlite(engine)


def _baseline_pg(engine: Engine, workdir: Path) -> dict[str, Any]:
    dump = workdir / "transfers.copy"
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE bench_transfers (LIKE ledger_transfers INCLUDING ALL)")
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        with dump.open("wb") as out, cursor.copy("COPY ledger_transfers TO STDOUT") as copy:
            for block in copy:
                out.write(block)
    rows = 0
    server_before = server_cpu_s(engine)
    started = time.perf_counter()
    with engine.begin() as conn:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        with dump.open("rb") as source, cursor.copy("COPY bench_transfers FROM STDIN") as copy:
            while block := source.read(1 << 20):
                copy.write(block)
        rows = cursor.rowcount
    seconds = time.perf_counter() - started
    server_s = _server_delta(engine, server_before)
    size = dump.stat().st_size
    dump.unlink()
    return {"seconds": seconds, "server_cpu_s": server_s, "rows": rows, "bytes": size,
            "method": "COPY FROM STDIN"}


def _baseline_sqlite(engine: Engine) -> dict[str, Any]:
    columns = [column.name for column in schema.ledger_transfers.columns]
    names = ", ".join(columns)
    with engine.connect() as conn:
        rows = [tuple(row) for row in conn.exec_driver_sql(
            f"SELECT {names} FROM ledger_transfers")]  # noqa: S608 (constants)
    with engine.begin() as conn:
        ddl = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type IN ('table', 'index')"
                                   " AND tbl_name = 'ledger_transfers' AND sql IS NOT NULL"
                                   ).scalars().all()
        for statement in ddl:
            conn.exec_driver_sql(statement.replace("ledger_transfers", "bench_transfers"))
    marks = ", ".join("?" * len(columns))
    started = time.perf_counter()
    with engine.begin() as conn:
        for start in range(0, len(rows), CHUNK):
            conn.exec_driver_sql(f"INSERT INTO bench_transfers ({names}) "  # noqa: S608
                                 f"VALUES ({marks})", rows[start:start + CHUNK])
    return {"seconds": time.perf_counter() - started, "rows": len(rows), "bytes": 0,
            "method": "executemany"}


def run_database(kind: str, lines: int, workdir: Path, *, batch_size: int, shops: int,
                 log: Callable[[str], None]) -> dict[str, Any]:
    url, drop = open_database(kind, workdir)
    try:
        ledger_db.migrate(url)
        engine = ledger_db.connect(url)
        try:
            started = time.perf_counter()
            build_world(engine, shops)
            log(f"{kind}: world in {time.perf_counter() - started:.1f} s")
            started = time.perf_counter()
            counts = load_orders(engine, lines, shops)
            log(f"{kind}: {counts['lines']:,} lines of {counts['orders']:,} orders written in "
                f"{time.perf_counter() - started:.1f} s")
            accrual = _timed_run(engine, DAY0 + DAY_MS, batch_size)
            log(f"{kind}: accrual {accrual['seconds']:.1f} s")
            marked = mark_charged_and_received(engine)
            settlement = _timed_run(engine, DAY0 + 16 * DAY_MS, batch_size)
            log(f"{kind}: settlement {settlement['seconds']:.1f} s")
            base = baseline(engine, workdir)
            log(f"{kind}: baseline {base['rows']:,} rows in {base['seconds']:.1f} s")
        finally:
            engine.dispose()
    finally:
        drop()
    return {"database": kind, **counts, "shops": shops, "accrual": accrual, "marked": marked,
            "settlement": settlement, "baseline": base, "batch_size": batch_size}


def open_database(kind: str, workdir: Path) -> tuple[str, Callable[[], None]]:
    if kind == "sqlite":
        path = workdir / "billing.db"

        def remove() -> None:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)

        remove()
        return f"sqlite:///{path}", remove
    admin = sqlalchemy.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT",
                                     connect_args={"connect_timeout": 3})
    name = f"cps_bench_{secrets.token_hex(4)}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sqlalchemy.exc.OperationalError as err:
        admin.dispose()
        raise BenchError(f"no PostgreSQL server at 127.0.0.1:5432 (user postgres): "
                         f"{str(err.orig).strip()}") from None

    def drop() -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", drop


# -- report --------------------------------------------------------------------------------

def phases(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the table: accrual, settlement, total, baseline (with lines/s and ratio)."""
    base_s = r["baseline"]["seconds"]
    total_s = r["accrual"]["seconds"] + r["settlement"]["seconds"]
    acc, settle, base = r["accrual"], r["settlement"], r["baseline"]
    out = [{"phase": "accrual run (as of paid + 1 day)", "seconds": acc["seconds"],
            "rows": acc["rows_written"], "cpu_s": acc["cpu_s"],
            "server_cpu_s": acc["server_cpu_s"]},
           {"phase": "settlement run (as of paid + 16 days)", "seconds": settle["seconds"],
            "rows": settle["rows_written"], "cpu_s": settle["cpu_s"],
            "server_cpu_s": settle["server_cpu_s"]},
           {"phase": "**total**", "seconds": total_s,
            "rows": acc["rows_written"] + settle["rows_written"],
            "cpu_s": acc["cpu_s"] + settle["cpu_s"],
            "server_cpu_s": None if acc["server_cpu_s"] is None
            else acc["server_cpu_s"] + settle["server_cpu_s"]},
           {"phase": f"baseline: {base['method']} of the ledger rows", "seconds": base_s,
            "rows": base["rows"], "cpu_s": None, "server_cpu_s": base.get("server_cpu_s")}]
    for row in out:
        row["lines_per_s"] = r["lines"] / row["seconds"] if row["seconds"] else 0.0
        row["vs_baseline"] = row["seconds"] / base_s if base_s else 0.0
    return out


def table(r: dict[str, Any]) -> str:
    lines = ["| phase | seconds | lines/s | rows written | vs baseline | run CPU s "
             "| database CPU s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for row in phases(r):
        lines.append(f"| {row['phase']} | {row['seconds']:.1f} | {row['lines_per_s']:,.0f} "
                     f"| {row['rows']:,} | {row['vs_baseline']:.2f}x | {_cpu(row['cpu_s'])} "
                     f"| {_cpu(row['server_cpu_s'])} |")
    return "\n".join(lines) + "\n"


def render(results: dict[str, Any], command: str) -> str:
    mach = results["machine"]
    out = [f"## {mach['date']}: billing run", "", f"Command: `{command}`  ",
           f"Machine: {mach['cpu']}, {mach['cores']} cores, Linux {mach['kernel']}, Python "
           f"{mach['python']}; the run and its database on the same cores (load average "
           f"{results['load']} at the start).", ""]
    for r in results["databases"]:
        acc, settle = r["accrual"], r["settlement"]
        total = acc["seconds"] + settle["seconds"]
        out += [f"**{r['database']}**: {r['lines']:,} order lines of {r['orders']:,} orders "
                f"in {r['shops']} shops (80 % cps, 10 % self-operated, 10 % none), batches "
                f"of {r['batch_size']:,} orders.", "", table(r),
                f"Total {total:.1f} s = **{total / r['baseline']['seconds']:.2f}x** the "
                f"baseline ({r['baseline']['rows']:,} ledger rows in "
                f"{r['baseline']['seconds']:.1f} s). Written: accrual "
                f"{_written(acc['written'])}; settlement {_written(settle['written'])}.", ""]
    return "\n".join(out)


def _cpu(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}"


def _written(written: dict[str, int]) -> str:
    return ", ".join(f"{table} {count:,}" for table, count in written.items() if count)


def plot(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    databases = results["databases"]
    fig, axes = plt.subplots(1, len(databases), figsize=(6.5 * len(databases), 4.5),
                             squeeze=False)
    for ax, r in zip(axes[0], databases, strict=True):
        rows = phases(r)
        names = ["accrual", "settlement", "total", "baseline"]
        ax.bar(names, [row["seconds"] for row in rows],
               color=["#4a8", "#48a", "#246", "#999"])
        for x, row in enumerate(rows):
            ax.text(x, row["seconds"], f"{row['seconds']:.1f} s\n{row['vs_baseline']:.2f}x",
                    ha="center", va="bottom", fontsize=8)
        if r["database"] == "postgresql":
            ax.axhline(60 * r["lines"] / 1_000_000, color="red", linewidth=0.8, linestyle=":",
                       label="60 s per 1M lines")
            ax.legend(loc="upper left")
        ax.set_ylim(top=max(row["seconds"] for row in rows) * 1.18)  # room for the labels
        ax.set_ylabel("seconds")
        ax.set_title(f"{r['database']}: {r['lines']:,} lines")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.billing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--sqlite-lines", type=int, default=None,
                        help="lines for the SQLite run (default: --lines)")
    parser.add_argument("--database", choices=("postgresql", "sqlite", "both"),
                        default="postgresql")
    parser.add_argument("--batch-size", type=int, default=2_000)
    parser.add_argument("--shops", type=int, default=SHOPS,
                        help=f"shops in the world (1-{SHOPS}; each has ~130 rate rules)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-record", action="store_true",
                        help="do not append to bench/RESULTS.md")
    args = parser.parse_args(argv)
    for name in ("lines", "sqlite_lines", "batch_size", "shops"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.shops > SHOPS:
        parser.error(f"--shops must be at most {SHOPS}")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = args.out or Path(__file__).with_name("out") / f"billing-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    kinds = ("postgresql", "sqlite") if args.database == "both" else (args.database,)
    results: dict[str, Any] = {"machine": report.machine(), "databases": [],
                               "load": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    try:
        for kind in kinds:
            lines = (args.sqlite_lines or args.lines) if kind == "sqlite" else args.lines
            with tempfile.TemporaryDirectory(dir=out) as workdir:
                results["databases"].append(run_database(
                    kind, lines, Path(workdir), batch_size=args.batch_size, shops=args.shops,
                    log=_log))
    except BenchError as err:
        print(f"python -m bench.billing: {err}", file=sys.stderr)
        return 2
    report.write_json(results, out / "results.json")
    plot(results, out / "billing.png")
    command = "python -m bench.billing " + " ".join(sys.argv[1:] if argv is None else argv)
    text = render(results, command.strip())
    print(text)
    if not args.no_record:
        report.append_results_md(text + f"\nFiles: `{out}` (results.json, billing.png).\n")
    return 0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
