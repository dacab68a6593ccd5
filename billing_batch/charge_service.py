"""``cps-billing charges serve``: charge requests out to Kafka, charge results back in.

One long-running process does two things:

* runs the ledger's outbox publisher (``ledger_db.outbox.serve_publisher``), so the
  charge requests a billing run wrote reach ``CHARGE_REQUESTS_TOPIC`` even when no
  attribution service runs; the publisher lock keeps one publisher per database
  whichever service holds it, the others standing by (taking over within 1 s);
* consumes ``CHARGE_RESULTS_TOPIC`` in the consumer group ``cps-charge-results``
  (``CPS_CHARGE_RESULTS_GROUP``), up to ``CPS_CHARGE_BATCH_MAX`` (500) records per poll.
  ``store_results`` parses a batch and, in one transaction, applies the results
  (``billing_charges.apply_results``: retries' requests go into the outbox in that
  transaction) and dead-letters the unreadable ones into ``dead_letters`` with the raw
  bytes, the reason and the field.  Offsets are committed after the database commit:
  a crash replays the batch, which changes nothing the second time.  A database outage
  stops consumption (the batch is retried every second), so it costs lag, not results.

Metrics (``billing_batch.metrics``) on ``CPS_CHARGE_METRICS_PORT`` (9466; 0 = none).

SIGTERM or SIGINT stops it: the batch in hand is written and committed, the publisher
finishes its batch, exit 0.  Settings (``ChargeSettings``) come from ``CPS_*``
variables; a bad one stops the command naming the variable (exit 2).

``add_charge_commands(subparsers)`` mounts ``charges serve``, ``charges list [--failed]
[--json]`` and ``charges retry ORDER`` into ``cps-billing``; ``main(argv)`` runs them
alone (``python -m billing_batch.charge_service charges list``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
import prometheus_client
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError, KafkaError
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import Connection, Engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

import ledger_db
from billing_batch import charges, metrics
from billing_batch.charges import ApplySummary, ChargeError, ChargeState, Effect
from contracts.charges import ChargeResult, ChargeSchemaError
from contracts.settings import ConfigError, KafkaBootstrap, LogLevel, load_settings
from contracts.topics import CHARGE_RESULTS_TOPIC
from ledger_db import outbox, schema

log = logging.getLogger("cps.billing.charge_service")

GROUP_ID = "cps-charge-results"
PROG = "cps-billing charges"
# JSON spells a NUL character \u0000; PostgreSQL text cannot hold one, so a result
# carrying one would fail its whole batch on every retry: it is dead-lettered.
_JSON_NUL = b"\\u0000"
MAX_DEAD_LETTER_ORDER_ID = 1024
PositiveInt = Annotated[int, Field(gt=0)]


class ChargeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CPS_", extra="ignore", frozen=True)

    database_url: str = ledger_db.DEFAULT_DATABASE_URL
    kafka_bootstrap: KafkaBootstrap = "127.0.0.1:9092"
    charge_results_group: str = GROUP_ID
    charge_max_attempts: PositiveInt = charges.DEFAULT_MAX_ATTEMPTS
    charge_batch_max: PositiveInt = 500
    outbox_batch_max: PositiveInt = 1000
    poll_interval_ms: PositiveInt = 200
    charge_metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9466  # 0: no /metrics
    log_level: LogLevel = "info"

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str) -> str:
        ledger_db.parse_url(value)  # DatabaseUrlError (a ValueError) names the problem
        return value


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """One record as the consumer read it."""

    raw: bytes
    partition: int | None = None
    offset: int | None = None
    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    summary: ApplySummary
    dead_lettered: int


def parse_results(records: Sequence[ResultRecord]
                  ) -> tuple[list[ChargeResult], list[tuple[ResultRecord, ChargeSchemaError]]]:
    """The usable results, in order, and the unusable records with why."""
    results: list[ChargeResult] = []
    bad: list[tuple[ResultRecord, ChargeSchemaError]] = []
    for record in records:
        try:
            if _JSON_NUL in record.raw:
                raise ChargeSchemaError("(message)", "contains a NUL character (\\u0000), "
                                        "which the database cannot store")
            results.append(ChargeResult.from_json(record.raw))
        except ChargeSchemaError as err:
            bad.append((record, err))
    return results, bad


def store_results(engine: Engine, records: Sequence[ResultRecord], *, now_ms: int | None = None,
                  max_attempts: int = charges.DEFAULT_MAX_ATTEMPTS) -> BatchOutcome:
    """Apply a batch's results and dead-letter its unusable records, in one transaction."""
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    results, bad = parse_results(records)
    with engine.connect() as conn:
        conn.execution_options(ledger_begin="IMMEDIATE")
        with conn.begin():
            summary = charges.apply_results(conn, results, now_ms, max_attempts=max_attempts)
            _dead_letter(conn, bad, now_ms)
    return BatchOutcome(summary, len(bad))


def _dead_letter(conn: Connection, bad: Sequence[tuple[ResultRecord, ChargeSchemaError]],
                 now_ms: int) -> None:
    if not bad:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(dialect.insert(schema.dead_letters).on_conflict_do_nothing(), [
        {"source": CHARGE_RESULTS_TOPIC, "kafka_partition": record.partition,
         "kafka_offset": record.offset, "key": record.key, "raw": record.raw,
         "reason": str(err)[:2000], "field": err.field[:255],
         "order_id": _readable_order_id(record.raw), "received_at": now_ms}
        for record, err in bad])


def _readable_order_id(raw: bytes) -> str | None:
    with contextlib.suppress(orjson.JSONDecodeError):
        obj = orjson.loads(raw)
        value = obj.get("order_id") if isinstance(obj, dict) else None
        if isinstance(value, str) and "\x00" not in value:
            return value[:MAX_DEAD_LETTER_ORDER_ID]
    return None


class ChargeService:
    """The outbox publisher and the result consumer; ``start``/``stop`` or ``run``."""

    def __init__(self, engine: Engine, bootstrap: str, *, group_id: str = GROUP_ID,
                 max_attempts: int = charges.DEFAULT_MAX_ATTEMPTS, batch_max: int = 500,
                 poll_ms: int = 200, outbox_batch_max: int = 1000,
                 client_id: str = "cps-charge-service") -> None:
        self.engine = engine
        self._bootstrap = bootstrap
        self._group_id = group_id
        self._max_attempts = max_attempts
        self._batch_max = batch_max
        self._poll_ms = poll_ms
        self._client_id = client_id
        self._stop = asyncio.Event()
        self._producer = outbox.KafkaOutboxProducer(bootstrap, client_id=client_id + "-outbox")
        self.publisher = outbox.OutboxPublisher(engine, self._producer,
                                                batch_max=outbox_batch_max)
        self._tasks: list[asyncio.Task[None]] = []
        self.counts: Counter[Effect] = Counter()
        self.dead_lettered = 0

    async def start(self) -> None:
        self._stop.clear()
        self._tasks = [
            asyncio.create_task(outbox.serve_publisher(self.engine, self._producer,
                                                       self.publisher, self._stop),
                                name="charge-outbox"),
            asyncio.create_task(self._consume_forever(), name="charge-results")]

    async def stop(self) -> None:
        self._stop.set()
        self.publisher.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def run(self) -> int:
        """Until SIGTERM or SIGINT (the CLI's ``charges serve``)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        await self.start()
        log.info("charge service up: database %s, kafka %s, group %s",
                 self.engine.url.render_as_string(hide_password=True), self._bootstrap,
                 self._group_id)
        await self._stop.wait()
        log.info("charge service stopping")
        await self.stop()
        return 0

    async def _consume_forever(self) -> None:
        while not self._stop.is_set():
            consumer = AIOKafkaConsumer(
                CHARGE_RESULTS_TOPIC, bootstrap_servers=self._bootstrap,
                group_id=self._group_id, client_id=self._client_id, enable_auto_commit=False,
                auto_offset_reset="earliest", max_poll_records=self._batch_max)
            try:
                await consumer.start()
                await self._consume(consumer)
            except KafkaError as err:
                log.warning("charge results: kafka %s (%s); reconnecting", self._bootstrap, err)
                await self._pause(1.0)
            finally:
                with contextlib.suppress(KafkaError, OSError):
                    await consumer.stop()

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        while not self._stop.is_set():
            batches = await consumer.getmany(timeout_ms=self._poll_ms,
                                             max_records=self._batch_max)
            records = [ResultRecord(r.value or b"", r.partition, r.offset, r.key)
                       for tp in sorted(batches, key=lambda tp: tp.partition)
                       for r in batches[tp]]
            if not records:
                continue
            if not await self._settle(records):
                return  # stopping with the batch unwritten: not committed, replayed later
            try:
                await consumer.commit()
            except CommitFailedError as err:  # a rebalance: the next owner replays it
                log.warning("charge results: commit failed (%s): batch will be replayed", err)

    async def _settle(self, records: Sequence[ResultRecord]) -> bool:
        while not self._stop.is_set():
            try:
                outcome = await asyncio.to_thread(store_results, self.engine, records,
                                                  max_attempts=self._max_attempts)
            except SQLAlchemyError as err:
                log.warning("charge results: database write failed (%s); retrying", err)
                await self._pause(1.0)
                continue
            self.counts.update(outcome.summary.counts)
            self.dead_lettered += outcome.dead_lettered
            for effect, count in outcome.summary.counts.items():
                metrics.charge_results.labels(effect.value).inc(count)
            metrics.charge_dead_letters.inc(outcome.dead_lettered)
            if outcome.summary.requests:
                self.publisher.wake()
            return True
        return False

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)


# -- command line --------------------------------------------------------------------------

def add_charge_commands(subparsers: Any) -> None:
    """``charges serve|list|retry`` on ``subparsers``; each sets ``handler(args) -> int``."""
    database = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a --database-url given before the sub-command is not reset to a default.
    database.add_argument("--database-url", default=argparse.SUPPRESS,
                          help="the ledger database (default: CPS_DATABASE_URL)")
    group = subparsers.add_parser("charges", help="merchant charges: serve, list, retry")
    commands = group.add_subparsers(dest="charges_command", required=True)
    serve = commands.add_parser("serve", help="publish charge requests, apply charge results")
    serve.set_defaults(handler=_serve)
    listing = commands.add_parser("list", parents=[database], help="charges by order")
    listing.add_argument("--failed", action="store_true",
                         help="only failed charges (never settled; to retry or write off)")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=_list)
    retry = commands.add_parser("retry", parents=[database],
                                help="request a failed charge once more")
    retry.add_argument("order_id", metavar="ORDER")
    retry.set_defaults(handler=_retry)


def _serve(args: argparse.Namespace) -> int:
    import uvloop

    overrides = {"database_url": args.database_url} if getattr(args, "database_url", None) \
        else {}
    try:
        settings = load_settings(ChargeSettings, **overrides)
    except ConfigError as err:
        print(f"{PROG} serve: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = ledger_db.connect(settings.database_url)
    try:
        ledger_db.migrate(engine)
        if settings.charge_metrics_port:
            serve_metrics(engine, settings.charge_metrics_port)
        service = ChargeService(engine, settings.kafka_bootstrap,
                                group_id=settings.charge_results_group,
                                max_attempts=settings.charge_max_attempts,
                                batch_max=settings.charge_batch_max,
                                poll_ms=settings.poll_interval_ms,
                                outbox_batch_max=settings.outbox_batch_max)
        return uvloop.run(service.run())
    except SQLAlchemyError as err:
        print(f"{PROG} serve: database error: {ledger_db.database_problem(err)}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()


def serve_metrics(engine: Engine, port: int) -> None:
    """``/metrics`` of this process on ``port`` (a daemon thread of prometheus_client)."""
    metrics.CHARGE_REGISTRY.register(metrics.LedgerCollector(engine))
    prometheus_client.start_http_server(port, registry=metrics.CHARGE_REGISTRY)
    log.info("metrics on http://0.0.0.0:%d/metrics", port)


def _list(args: argparse.Namespace) -> int:
    return _with_ledger(args, "list", lambda conn: _print_charges(conn, args))


def _print_charges(conn: Connection, args: argparse.Namespace) -> int:
    rows = charges.list_charges(conn, status=ChargeState.FAILED if args.failed else None)
    if args.json:
        print(json.dumps([row.to_dict() for row in rows], indent=2))
        return 0
    for row in rows:
        print(f"{row.order_id:24} {row.status.value:8} attempt {row.attempts:<3} "
              f"{row.amount_minor:>14,} {row.charge_id:28} {_iso(row.updated_at_ms)}"
              f"{'  ' + row.reason if row.reason else ''}")
    print(f"{len(rows)} {'failed ' if args.failed else ''}charge{'s' * (len(rows) != 1)}",
          file=sys.stderr)
    return 0


def _retry(args: argparse.Namespace) -> int:
    return _with_ledger(args, "retry", lambda conn: _retry_one(conn, args.order_id))


def _retry_one(conn: Connection, order_id: str) -> int:
    try:
        with conn.begin():
            request = charges.retry_failed(conn, order_id, time.time_ns() // 1_000_000)
    except ChargeError as err:
        print(f"{PROG} retry: {err}", file=sys.stderr)
        return 2
    print(f"charge {request.charge_id} of order {request.order_id} requested "
          f"(attempt {request.attempt}, {request.amount_minor:,} minor units); "
          "`cps-billing charges serve` publishes it")
    return 0


def _with_ledger(args: argparse.Namespace, command: str,
                 work: Callable[[Connection], int]) -> int:
    """``work`` on a connection to the migrated ledger; errors as messages and exit codes."""
    try:
        engine = ledger_db.connect(getattr(args, "database_url", None))
    except (ConfigError, ledger_db.DatabaseUrlError) as err:
        print(f"{PROG} {command}: {err}", file=sys.stderr)
        return 2
    try:
        ledger_db.migrate(engine)
        with engine.connect() as conn:
            return work(conn)
    except SQLAlchemyError as err:
        print(f"{PROG} {command}: database error: {ledger_db.database_problem(err)}",
              file=sys.stderr)
        return 1
    finally:
        engine.dispose()


def _iso(at_ms: int) -> str:
    moment = dt.datetime.fromtimestamp(at_ms // 1000, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cps-billing", description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default=None,
                        help="the ledger database (default: CPS_DATABASE_URL)")
    add_charge_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
