"""``cps-push``: the push worker and its endpoints and deliveries.

    cps-push serve
    cps-push endpoints add (--promoter ID | --channel ID) --url URL [--dev]
    cps-push endpoints list [--json] | disable ID [--reason TEXT] | enable ID
    cps-push endpoints rotate-secret ID [--grace-hours 24]
    cps-push deliveries list [--dead] [--endpoint ID] [--json]
    cps-push deliveries log EVENT_ID
    cps-push deliveries replay DELIVERY_ID | --all-dead

Settings from ``CPS_*`` variables (``service.PushSettings``); ``--database-url``
overrides ``CPS_DATABASE_URL``.  A secret is printed once, by ``add`` and
``rotate-secret``, on stdout; nothing logs it.  Bad input or configuration: a message
and exit 2; a database error: exit 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import prometheus_client
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

import ledger_db
from contracts.settings import ConfigError, CookieKeys, load_settings
from push_worker import endpoints, metrics, store
from push_worker.deliver import HttpTransport
from push_worker.service import PushSettings, PushWorker

PROG = "cps-push"


class KeySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CPS_", extra="ignore", frozen=True,
                                      arbitrary_types_allowed=True)

    push_secret_keys: CookieKeys
    push_allow_http_localhost: bool = False


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default=None,
                        help="the ledger database (default: CPS_DATABASE_URL)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="deliver pushes until SIGTERM").set_defaults(
        handler=_serve)
    ep = commands.add_parser("endpoints", help="webhook endpoints").add_subparsers(
        dest="sub", required=True)
    add = ep.add_parser("add", help="a new endpoint; prints its first secret once")
    owner = add.add_mutually_exclusive_group(required=True)
    owner.add_argument("--promoter", metavar="ID")
    owner.add_argument("--channel", metavar="ID")
    add.add_argument("--url", required=True)
    add.add_argument("--dev", action="store_true",
                     help="allow http://127.0.0.1 or http://localhost (tests, demos)")
    add.set_defaults(handler=_add)
    listing = ep.add_parser("list", help="every endpoint")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_list_endpoints)
    disable = ep.add_parser("disable", help="stop pushing to an endpoint")
    disable.add_argument("endpoint_id", metavar="ID")
    disable.add_argument("--reason", default=None)
    disable.set_defaults(handler=_disable)
    enable = ep.add_parser("enable", help="push again (what waited is due at once)")
    enable.add_argument("endpoint_id", metavar="ID")
    enable.set_defaults(handler=_enable)
    rotate = ep.add_parser("rotate-secret", help="a new secret; the old ones expire later")
    rotate.add_argument("endpoint_id", metavar="ID")
    rotate.add_argument("--grace-hours", type=float, default=24.0)
    rotate.set_defaults(handler=_rotate)
    de = commands.add_parser("deliveries", help="the delivery outbox").add_subparsers(
        dest="sub", required=True)
    dl = de.add_parser("list", help="latest deliveries, newest first")
    dl.add_argument("--dead", action="store_true", help="only dead ones (retries exhausted)")
    dl.add_argument("--endpoint", default=None, metavar="ID")
    dl.add_argument("--limit", type=int, default=100)
    dl.add_argument("--json", action="store_true")
    dl.set_defaults(handler=_list_deliveries)
    lg = de.add_parser("log", help="every attempt of an event's deliveries")
    lg.add_argument("event_id", metavar="EVENT")
    lg.set_defaults(handler=_log)
    rp = de.add_parser("replay", help="dead deliveries back to pending, due now")
    which = rp.add_mutually_exclusive_group(required=True)
    which.add_argument("delivery_id", metavar="ID", nargs="?", type=int)
    which.add_argument("--all-dead", action="store_true")
    rp.set_defaults(handler=_replay)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return int(args.handler(args))


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"database_url": args.database_url} if args.database_url else {}


def _serve(args: argparse.Namespace) -> int:
    import uvloop

    try:
        settings = load_settings(PushSettings, **_overrides(args))
    except ConfigError as err:
        print(f"{PROG} serve: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = ledger_db.connect(settings.database_url)
    try:
        ledger_db.migrate(engine)
        if settings.push_metrics_port:
            metrics.REGISTRY.register(metrics.LedgerCollector(engine))
            prometheus_client.start_http_server(settings.push_metrics_port,
                                                registry=metrics.REGISTRY)
        transport = HttpTransport(timeout_s=settings.push_timeout_s)
        worker = PushWorker(engine, transport,
                            endpoints.SecretSealer(settings.push_secret_keys), settings)
        return uvloop.run(worker.serve())
    except SQLAlchemyError as err:
        print(f"{PROG} serve: database error: {ledger_db.database_problem(err)}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()


def _keys() -> KeySettings:
    return load_settings(KeySettings)


def _add(args: argparse.Namespace) -> int:
    def work(conn: Connection) -> int:
        keys = _keys()
        kind, owner = ("promoter", args.promoter) if args.promoter else ("channel", args.channel)
        with conn.begin():
            created = endpoints.add_endpoint(
                conn, endpoints.SecretSealer(keys.push_secret_keys), owner_kind=kind,
                owner_id=owner, url=args.url,
                allow_http_localhost=args.dev or keys.push_allow_http_localhost)
        print(f"endpoint {created.endpoint_id} for {kind} {owner}: {args.url}")
        print(f"secret {created.secret_id}: {created.secret}")
        print("(the secret is shown once; verify pushes with it)", file=sys.stderr)
        return 0
    return _with_ledger(args, "endpoints add", work)


def _list_endpoints(args: argparse.Namespace) -> int:
    def work(conn: Connection) -> int:
        rows = endpoints.list_endpoints(conn)
        if args.json:
            print(json.dumps([_as_dict(r) for r in rows], indent=2))
            return 0
        for r in rows:
            reason = f"  ({r.disabled_reason})" if r.disabled_reason else ""
            print(f"{r.endpoint_id:22} {r.owner_kind:8} {r.owner_id:20} {r.status:8} "
                  f"{r.url}{reason}")
        print(f"{len(rows)} endpoint{'s' * (len(rows) != 1)}", file=sys.stderr)
        return 0
    return _with_ledger(args, "endpoints list", work)


def _as_dict(row: Any) -> dict[str, Any]:
    return {name: getattr(row, name) for name in row.__slots__}


def _disable(args: argparse.Namespace) -> int:
    return _set_status(args, active=False)


def _enable(args: argparse.Namespace) -> int:
    return _set_status(args, active=True)


def _set_status(args: argparse.Namespace, *, active: bool) -> int:
    def work(conn: Connection) -> int:
        with conn.begin():
            endpoint = endpoints.set_status(conn, args.endpoint_id, active=active,
                                            reason=getattr(args, "reason", None))
        print(f"endpoint {endpoint.endpoint_id}: {endpoint.status}")
        return 0
    return _with_ledger(args, "endpoints " + ("enable" if active else "disable"), work)


def _rotate(args: argparse.Namespace) -> int:
    def work(conn: Connection) -> int:
        if args.grace_hours < 0:
            raise endpoints.EndpointError("--grace-hours cannot be negative")
        sealer = endpoints.SecretSealer(_keys().push_secret_keys)
        with conn.begin():
            created = endpoints.rotate_secret(conn, sealer, args.endpoint_id,
                                              grace_ms=int(args.grace_hours * 3_600_000))
        print(f"secret {created.secret_id}: {created.secret}")
        print(f"(older secrets still sign for {args.grace_hours:g} h)", file=sys.stderr)
        return 0
    return _with_ledger(args, "endpoints rotate-secret", work)


def _list_deliveries(args: argparse.Namespace) -> int:
    def work(conn: Connection) -> int:
        rows = store.list_deliveries(conn, dead=args.dead, limit=args.limit,
                                     endpoint_id=args.endpoint)
        if args.json:
            print(json.dumps([_as_dict(r) for r in rows], indent=2))
            return 0
        for r in rows:
            last = r.last_error or (f"HTTP {r.last_status_code}" if r.last_status_code else "")
            print(f"{r.id:>8} {r.event_id:28} {r.event_type:24} {r.endpoint_id:22} "
                  f"{r.status:9} attempts {r.attempts:<2} {last}")
        print(f"{len(rows)} deliver{'ies' if len(rows) != 1 else 'y'}", file=sys.stderr)
        return 0
    return _with_ledger(args, "deliveries list", work)


def _log(args: argparse.Namespace) -> int:
    def work(conn: Connection) -> int:
        rows = store.delivery_log(conn, args.event_id)
        if not rows:
            print(f"{PROG} deliveries log: no delivery of event {args.event_id!r}",
                  file=sys.stderr)
            return 2
        for r in rows:
            if r["attempt"] is None:
                print(f"delivery {r['delivery_id']} to {r['endpoint_id']}: {r['status']}, "
                      "not attempted yet")
                continue
            answer = f"HTTP {r['status_code']}" if r["status_code"] else r["error"]
            print(f"delivery {r['delivery_id']} to {r['endpoint_id']} ({r['status']}): "
                  f"attempt {r['attempt']} at {_iso(int(str(r['started_at'])))} "
                  f"{r['latency_ms']} ms {answer}")
        return 0
    return _with_ledger(args, "deliveries log", work)


def _replay(args: argparse.Namespace) -> int:
    def work(conn: Connection) -> int:
        with conn.begin():
            count = store.replay(conn, delivery_id=args.delivery_id, all_dead=args.all_dead)
        if count == 0 and args.delivery_id is not None:
            print(f"{PROG} deliveries replay: no dead delivery {args.delivery_id}",
                  file=sys.stderr)
            return 2
        print(f"{count} dead deliver{'ies' if count != 1 else 'y'} due again")
        return 0
    return _with_ledger(args, "deliveries replay", work)


def _with_ledger(args: argparse.Namespace, command: str,
                 work: Callable[[Connection], int]) -> int:
    try:
        engine = ledger_db.connect(args.database_url)
    except (ConfigError, ledger_db.DatabaseUrlError) as err:
        print(f"{PROG} {command}: {err}", file=sys.stderr)
        return 2
    try:
        ledger_db.migrate(engine)
        with engine.connect() as conn:
            return work(conn)
    except (ConfigError, endpoints.EndpointError) as err:
        print(f"{PROG} {command}: {err}", file=sys.stderr)
        return 2
    except SQLAlchemyError as err:
        print(f"{PROG} {command}: database error: {ledger_db.database_problem(err)}",
              file=sys.stderr)
        return 1
    finally:
        engine.dispose()


def _iso(at_ms: int) -> str:
    return dt.datetime.fromtimestamp(at_ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


if __name__ == "__main__":
    sys.exit(main())
