"""``cps-billing``: the billing batch, its reconciliation, statements and master data.

    cps-billing run --as-of 2026-12-19 [--dry-run] [--batch-size 2000] [--pause 0.05]
                    [--wait 0] [--json] [--metrics-file PATH]
    cps-billing reconcile [--json]
    cps-billing statements --from 2026-12-01 --to 2027-01-01 [--account promoter:P1]
                           [--entries] [--format csv|json] [--out FILE]
    cps-billing runs [--json]
    cps-billing rates|channel-rates|fees|activities|schedule ...   (billing_batch.config_cli)
    cps-billing charges serve|list|retry ...                      (billing_batch.charge_service)

The database is ``--database-url`` or ``CPS_DATABASE_URL`` (default the embedded
SQLite ledger), migrated on first use.  Exit codes: 0 done, 1 reconciliation mismatch,
2 bad input or settings, 3 another run holds the lock.  Progress goes to stderr: a bar
on a terminal, a plain line every 10 % otherwise; results go to stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy
from sqlalchemy import Engine

import ledger_db
from billing_batch import charge_service, config_cli, metrics
from billing_batch import reconcile as reconciliation
from billing_batch import statements as statement_module
from billing_batch.run import RunBusy, RunOptions, RunSummary, run_billing
from billing_batch.store import ConcurrentChange
from contracts import times
from contracts.settings import ConfigError
from ledger_db import schema

EXIT_MISMATCH, EXIT_USAGE, EXIT_BUSY = 1, 2, 3


class UsageError(ValueError):
    """Bad command-line input; the message says which and why."""


def parse_instant_ms(text: str, name: str) -> int:
    """``contracts.times.parse_instant_ms`` naming the option it came from."""
    try:
        return times.parse_instant_ms(text)
    except ValueError as err:
        raise UsageError(f"{name}: {err}") from None


class Progress:
    """A bar on a terminal, a plain line every 10 % (or phase change) otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._last: tuple[str, int] = ("", -1)
        self._started = time.monotonic()

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        share = done / total if total else 1.0
        elapsed = time.monotonic() - self._started
        if self._tty:
            width = 30
            filled = int(share * width)
            self._stream.write(f"\r{phase:8} [{'#' * filled}{'.' * (width - filled)}] "
                               f"{done:,}/{total or done:,} {elapsed:6.1f}s")
            if total is None or done >= total:
                self._stream.write("\n")
            self._stream.flush()
            return
        tenth = int(share * 10)
        if (phase, tenth) != self._last:
            self._last = (phase, tenth)
            self._stream.write(f"billing: {phase} {done:,}/{total or done:,} "
                               f"({share:.0%}) after {elapsed:.1f}s\n")
            self._stream.flush()


def _engine(args: argparse.Namespace) -> Engine:
    engine = ledger_db.connect(args.database_url)
    ledger_db.migrate(engine)
    return engine


def _run(args: argparse.Namespace) -> int:
    options = RunOptions(as_of_ms=parse_instant_ms(args.as_of, "--as-of"), dry_run=args.dry_run,
                         batch_size=_positive(args.batch_size, "--batch-size"),
                         pause_s=max(0.0, args.pause), wait_s=max(0.0, args.wait))
    metrics_file = args.metrics_file or os.environ.get("CPS_BILLING_METRICS_FILE") or None
    engine = _engine(args)
    started = time.monotonic()
    summary: RunSummary | None = None
    code, balanced = 0, True
    try:
        summary = run_billing(engine, options, progress=Progress(sys.stderr))
    except RunBusy as busy:
        print(f"cps-billing run: {busy}", file=sys.stderr)
        return EXIT_BUSY  # not this run's failure: the running one reports
    except reconciliation.ReconciliationFailed as failed:
        print(f"cps-billing run: stopped, the books do not balance:\n{failed}", file=sys.stderr)
        code, balanced = EXIT_MISMATCH, False
    except ConcurrentChange as change:
        print(f"cps-billing run: stopped: {change}; run again", file=sys.stderr)
        code = EXIT_BUSY
    finally:
        engine.dispose()
    if metrics_file and not options.dry_run:
        metrics.write_run_metrics(metrics_file, summary=asdict(summary) if summary else None,
                                  success=code == 0, reconciliation_ok=balanced,
                                  duration_s=time.monotonic() - started)
    if summary is not None:
        print(summary.to_json() if args.json else "\n".join(summary_lines(summary)))
    return code


def _positive(value: int, name: str) -> int:
    if value <= 0:
        raise UsageError(f"{name}: must be positive, got {value}")
    return value


def summary_lines(summary: RunSummary) -> list[str]:
    amounts = summary.amounts
    mode = " (dry run: nothing written)" if summary.dry_run else ""
    return [
        f"billing run {summary.run_id} as of {_iso(summary.as_of_ms)}{mode}"
        f"{' (resumed)' if summary.resumed else ''}: {summary.orders:,} orders in "
        f"{summary.batches} batches, {summary.seconds:.1f}s",
        f"  lines: {summary.lines_accrued:,} accrued, {summary.lines_without_commission:,} "
        f"without commission, {summary.lines_reallocated:,} re-allocated after refunds; "
        f"{summary.awaiting_attribution:,} orders await attribution",
        f"  charges requested: {summary.charges_requested:,}; settlement held: "
        f"{', '.join(f'{k} {v:,}' for k, v in sorted(summary.held.items())) or 'none'}",
        f"  money (minor units): frozen {amounts.get('freeze', 0):,}, unfrozen "
        f"{amounts.get('unfreeze', 0):,}, settled {amounts.get('settle', 0):,}, clawed back "
        f"{amounts.get('clawback', 0):,}, adjusted {amounts.get('adjust', 0):,}",
        f"  payouts: {summary.payouts:,} totalling {summary.payout_minor:,}; "
        f"{summary.negative_balances:,} negative balances carried; "
        f"{summary.transfers:,} transfers written",
    ]


def _iso(at_ms: int) -> str:
    return dt.datetime.fromtimestamp(at_ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _reconcile(args: argparse.Namespace) -> int:
    engine = _engine(args)
    try:
        with engine.connect() as conn:
            report = reconciliation.reconcile(conn)
    finally:
        engine.dispose()
    print(json.dumps(report.as_dict(), indent=2) if args.json else "\n".join(report.lines()))
    return 0 if report.ok else EXIT_MISMATCH


def _statements(args: argparse.Namespace) -> int:
    start = parse_instant_ms(args.start, "--from")
    end = parse_instant_ms(args.end, "--to")
    if end <= start:
        raise UsageError("--to must be after --from")
    engine = _engine(args)
    try:
        with engine.connect() as conn:
            rows = statement_module.statements(conn, start, end, account_id=args.account,
                                               entries=args.entries)
    finally:
        engine.dispose()
    if args.format == "json":
        text = json.dumps([row.as_dict() for row in rows], indent=2) + "\n"
    else:
        text = statement_module.to_csv(rows)
    if args.out:
        Path(args.out).write_text(text)
        print(f"{len(rows)} statements written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _runs(args: argparse.Namespace) -> int:
    engine = _engine(args)
    runs = schema.billing_runs
    try:
        with engine.connect() as conn:
            rows = conn.execute(sqlalchemy.select(runs).order_by(runs.c.started_at)).all()
    finally:
        engine.dispose()
    listed: list[dict[str, Any]] = [
        {"run_id": row.run_id, "as_of": _iso(row.as_of), "status": row.status,
         "started_at": _iso(row.started_at),
         "finished_at": _iso(row.finished_at) if row.finished_at else None,
         "cursor": row.cursor_order_id} for row in rows]
    if args.json:
        print(json.dumps(listed, indent=2))
    else:
        for run in listed:
            print(f"{run['run_id']:16} as of {run['as_of']}  {run['status']:9} started "
                  f"{run['started_at']}  finished {run['finished_at'] or '-'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cps-billing", description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default=None,
                        help="the ledger database (default: CPS_DATABASE_URL)")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="accrue, settle and pay out as of a date")
    run.add_argument("--as-of", required=True, help="YYYY-MM-DD (00:00 UTC) or ISO datetime")
    run.add_argument("--dry-run", action="store_true", help="plan everything, write nothing")
    run.add_argument("--batch-size", type=int, default=2_000, help="orders per transaction")
    run.add_argument("--pause", type=float, default=0.0, help="seconds between batches")
    run.add_argument("--wait", type=float, default=0.0,
                     help="seconds to wait for a concurrent run (default: fail at once)")
    run.add_argument("--json", action="store_true", help="the summary as JSON")
    run.add_argument("--metrics-file", default=None,
                     help="write the run's Prometheus metrics here (node_exporter textfile "
                          "collector; default: CPS_BILLING_METRICS_FILE)")
    run.set_defaults(handler=_run)
    check = commands.add_parser("reconcile", help="check that the books balance")
    check.add_argument("--json", action="store_true")
    check.set_defaults(handler=_reconcile)
    report = commands.add_parser("statements", help="per-participant statements")
    report.add_argument("--from", dest="start", required=True)
    report.add_argument("--to", dest="end", required=True)
    report.add_argument("--account", help="one account, e.g. promoter:P1 or platform")
    report.add_argument("--entries", action="store_true", help="every transfer, not totals")
    report.add_argument("--format", choices=("csv", "json"), default="csv")
    report.add_argument("--out", help="write to this file instead of stdout")
    report.set_defaults(handler=_statements)
    runs = commands.add_parser("runs", help="list billing runs")
    runs.add_argument("--json", action="store_true")
    runs.set_defaults(handler=_runs)
    _mount_optional(commands)
    return parser


def _mount_optional(commands: Any) -> None:
    config_cli.add_config_commands(commands)
    charge_service.add_charge_commands(commands)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except (UsageError, ConfigError, ledger_db.DatabaseUrlError, ValueError) as error:
        print(f"cps-billing {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
