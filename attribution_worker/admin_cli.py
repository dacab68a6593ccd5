"""``cps-admin``: the ledger's schema, master data and dead letters from the command line.

    cps-admin db upgrade | check
    cps-admin shop add SHOP [--name N] [--cross-shop-opt-out]
    cps-admin shop join SHOP [--at ISO|MS]          cps-admin shop exit SHOP [--at ISO|MS]
    cps-admin shop list [--json]
    cps-admin channel add CH [--name N]             cps-admin channel list [--json]
    cps-admin channel authorise CH SHOP [--at]      cps-admin channel revoke CH SHOP [--at]
    cps-admin promoter add P [--account ACCT] [--self-purchase allow|deny|default]
                             [--webhook-url URL]
    cps-admin promoter list [--json]
    cps-admin base add BASE [--shop S] [--name N]   cps-admin base list [--json]
    cps-admin base member add BASE PROMOTER
    cps-admin deadletters list [--limit N] [--all] [--json]
    cps-admin deadletters show ID [--json]
    cps-admin deadletters replay ID... | --all

The database is ``--db URL`` or ``CPS_DATABASE_URL`` (default ``sqlite:///var/ledger.db``).
``--at`` takes ISO 8601 (``2024-06-01T12:00:00+08:00``; without an offset: UTC) or
milliseconds since the epoch; it defaults to now.  Times print as UTC.

Exit status: 0 done; 1 the database failed (unreachable, schema missing: run
``cps-admin db upgrade``), ``db check`` found differences, or a replay left dead letters
dead-lettered again; 2 bad usage or input (the message says what), never a traceback.
"""

from __future__ import annotations

import argparse
import base64
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

import ledger_db
from attribution_worker.order_store import (
    DeadLetter,
    DeadLetterNotFound,
    NotAnOrderMessage,
    OutcomeKind,
    get_dead_letter,
    list_dead_letters,
    replay_dead_letters,
)
from contracts.settings import ConfigError
from contracts.times import format_ms, parse_instant_ms
from ledger_db import master_data
from ledger_db.engine import DatabaseUrlError
from ledger_db.master_data import MasterDataError, Period, SelfPurchase

PROG = "cps-admin"
REASON_COLUMN_CHARS = 70


class UsageError(Exception):
    """Bad input the parser could not catch; exit 2 with the message."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def parse_at(value: str) -> int:
    """``--at``: ISO 8601 (UTC without an offset) or integer ms since the epoch."""
    try:
        return parse_instant_ms(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def escape(data: bytes | str) -> str:
    """Bytes or text made safe for a terminal: printable characters as they are, the rest
    (control characters, bytes that are not UTF-8) as Python escapes; ``\\`` doubled."""
    text = data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data
    out = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif 0xDC80 <= ord(char) <= 0xDCFF:  # an undecodable byte
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        elif char.isprintable():
            out.append(char)
        else:
            out.append(repr(char)[1:-1])
    return "".join(out)


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[escape(str(c)) for c in row] for row in rows]
    widths = [max(len(row[n]) for row in cells) for n in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths,
                                                                        strict=True)).rstrip()
                     for row in cells)


def _print_json(doc: object) -> None:
    print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())


def _periods(periods: Sequence[Period]) -> str:
    return ", ".join(f"{format_ms(p.start_ms)} .. {format_ms(p.end_ms)}" for p in periods) \
        or "-"


def _period_json(period: Period) -> dict[str, int | None]:
    return {"from": period.start_ms, "to": period.end_ms}


# -- commands ------------------------------------------------------------------------------

Handler = Callable[[argparse.Namespace, Engine], int]


def _db_upgrade(args: argparse.Namespace, engine: Engine) -> int:
    revision = ledger_db.migrate(engine)
    print(f"ledger schema at revision {revision} (head {ledger_db.head_revision()})")
    return 0


def _db_check(args: argparse.Namespace, engine: Engine) -> int:
    current = ledger_db.current_revision(engine)
    if current != ledger_db.head_revision():
        print(f"ledger schema at revision {current}, head is {ledger_db.head_revision()}: "
              f"run {PROG} db upgrade")
        return 1
    diffs = ledger_db.schema_diffs(engine)
    for diff in diffs:
        print(f"differs: {diff}")
    print("schema matches ledger_db.schema" if not diffs else f"{len(diffs)} differences")
    return 1 if diffs else 0


def _shop_add(args: argparse.Namespace, engine: Engine) -> int:
    with engine.begin() as conn:
        master_data.add_shop(conn, args.shop, now_ms=_now_ms(), name=args.name,
                             cross_shop_opt_out=args.cross_shop_opt_out)
    print(f"shop {args.shop} added")
    return 0


def _shop_join(args: argparse.Namespace, engine: Engine) -> int:
    with engine.begin() as conn:
        master_data.join_cps(conn, args.shop, args.at)
    print(f"shop {args.shop} joined CPS at {format_ms(args.at)}")
    return 0


def _shop_exit(args: argparse.Namespace, engine: Engine) -> int:
    with engine.begin() as conn:
        master_data.exit_cps(conn, args.shop, args.at)
    grace_end = args.at + master_data.CPS_EXIT_GRACE_MS
    print(f"shop {args.shop} exited CPS at {format_ms(args.at)} (orders created before "
          f"{format_ms(grace_end)} are still CPS)")
    return 0


def _shop_list(args: argparse.Namespace, engine: Engine) -> int:
    with engine.connect() as conn:
        found = master_data.list_shops(conn)
    if args.json:
        _print_json([{"shop_id": s.shop_id, "name": s.name,
                      "cross_shop_opt_out": s.cross_shop_opt_out, "created_at": s.created_at,
                      "cps_periods": [_period_json(p) for p in s.cps_periods]}
                     for s in found])
        return 0
    print(_table(("shop", "name", "cross-shop", "CPS periods"),
                 [(s.shop_id, s.name or "-", "opted out" if s.cross_shop_opt_out else "yes",
                   _periods(s.cps_periods)) for s in found]))
    return 0


def _channel_add(args: argparse.Namespace, engine: Engine) -> int:
    with engine.begin() as conn:
        master_data.add_channel(conn, args.channel, now_ms=_now_ms(), name=args.name)
    print(f"channel {args.channel} added")
    return 0


def _channel_authorise(args: argparse.Namespace, engine: Engine) -> int:
    with engine.begin() as conn:
        master_data.authorise_channel(conn, args.channel, args.shop, args.at)
    print(f"shop {args.shop} authorised channel {args.channel} at {format_ms(args.at)}")
    return 0


def _channel_revoke(args: argparse.Namespace, engine: Engine) -> int:
    with engine.begin() as conn:
        master_data.revoke_channel(conn, args.channel, args.shop, args.at)
    print(f"shop {args.shop} revoked channel {args.channel} at {format_ms(args.at)}")
    return 0


def _channel_list(args: argparse.Namespace, engine: Engine) -> int:
    with engine.connect() as conn:
        found = master_data.list_channels(conn)
    if args.json:
        _print_json([{"channel_id": c.channel_id, "name": c.name, "created_at": c.created_at,
                      "authorisations": [{"shop_id": shop, **_period_json(p)}
                                         for shop, p in c.authorisations]} for c in found])
        return 0
    print(_table(("channel", "name", "authorised by"),
                 [(c.channel_id, c.name or "-",
                   "; ".join(f"{shop} {_periods([p])}" for shop, p in c.authorisations) or "-")
                  for c in found]))
    return 0


def _promoter_add(args: argparse.Namespace, engine: Engine) -> int:
    policy = None if args.self_purchase == "default" else SelfPurchase(args.self_purchase)
    with engine.begin() as conn:
        master_data.add_promoter(conn, args.promoter, now_ms=_now_ms(), account_id=args.account,
                                 self_purchase=policy, webhook_url=args.webhook_url)
    print(f"promoter {args.promoter} added")
    return 0


def _promoter_list(args: argparse.Namespace, engine: Engine) -> int:
    with engine.connect() as conn:
        found = master_data.list_promoters(conn)
    if args.json:
        _print_json([{"promoter_id": p.promoter_id, "account_id": p.account_id,
                      "self_purchase": p.self_purchase, "webhook_url": p.webhook_url,
                      "created_at": p.created_at} for p in found])
        return 0
    print(_table(("promoter", "account", "self-purchase", "webhook"),
                 [(p.promoter_id, p.account_id or "-", p.self_purchase or "default",
                   p.webhook_url or "-") for p in found]))
    return 0


def _base_add(args: argparse.Namespace, engine: Engine) -> int:
    with engine.begin() as conn:
        master_data.add_base(conn, args.base, now_ms=_now_ms(), shop_id=args.shop,
                             name=args.name)
    print(f"base {args.base} added")
    return 0


def _base_member_add(args: argparse.Namespace, engine: Engine) -> int:
    with engine.begin() as conn:
        master_data.add_base_member(conn, args.base, args.promoter)
    print(f"promoter {args.promoter} added to base {args.base}")
    return 0


def _base_list(args: argparse.Namespace, engine: Engine) -> int:
    with engine.connect() as conn:
        found = master_data.list_bases(conn)
    if args.json:
        _print_json([{"base_id": b.base_id, "shop_id": b.shop_id, "name": b.name,
                      "created_at": b.created_at, "members": list(b.members)} for b in found])
        return 0
    print(_table(("base", "shop", "name", "members"),
                 [(b.base_id, b.shop_id or "(all shops)", b.name or "-",
                   ", ".join(b.members) or "-") for b in found]))
    return 0


def _dead_letter_json(letter: DeadLetter, *, with_raw: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": letter.id, "source": letter.source, "partition": letter.partition,
        "offset": letter.offset, "order_id": letter.order_id, "reason": letter.reason,
        "field": letter.field, "received_at": letter.received_at,
        "replayed_at": letter.replayed_at, "replay_result": letter.replay_result,
        "replay_reason": letter.replay_reason, "raw_bytes": len(letter.raw)}
    if with_raw:
        doc["key_base64"] = None if letter.key is None else base64.b64encode(letter.key).decode()
        doc["raw_base64"] = base64.b64encode(letter.raw).decode()
    return doc


def _deadletters_list(args: argparse.Namespace, engine: Engine) -> int:
    letters = list_dead_letters(engine, limit=args.limit, include_replayed=args.all)
    if args.json:
        _print_json([_dead_letter_json(d, with_raw=False) for d in letters])
        return 0
    if not letters:
        print("no dead letters" if args.all else "no open dead letters")
        return 0
    print(_table(("id", "received", "source", "order", "field", "reason", "replay"),
                 [(d.id, format_ms(d.received_at), _where(d), d.order_id or "-",
                   d.field or "-", _clip(d.reason), d.replay_result or "-")
                  for d in letters]))
    return 0


def _where(letter: DeadLetter) -> str:
    if letter.partition is None:
        return letter.source
    return f"{letter.source}[{letter.partition}]@{letter.offset}"


def _clip(text: str) -> str:
    return text if len(text) <= REASON_COLUMN_CHARS else text[:REASON_COLUMN_CHARS - 3] + "..."


def _deadletters_show(args: argparse.Namespace, engine: Engine) -> int:
    letter = get_dead_letter(engine, args.id)
    if letter is None:
        raise UsageError(f"no dead letter with id {args.id}")
    if args.json:
        _print_json(_dead_letter_json(letter, with_raw=True))
        return 0
    lines = [("id", str(letter.id)), ("source", _where(letter)),
             ("received", format_ms(letter.received_at)), ("order", letter.order_id or "-"),
             ("field", letter.field or "-"), ("reason", letter.reason),
             ("replayed", format_ms(letter.replayed_at)),
             ("replay", f"{letter.replay_result}: {letter.replay_reason}"
              if letter.replay_result else "-"),
             ("key", "-" if letter.key is None else escape(letter.key)),
             ("raw", f"({len(letter.raw)} bytes) {escape(letter.raw)}")]
    for label, value in lines:
        print(f"{label + ':':10s}{escape(value) if label not in ('key', 'raw') else value}")
    return 0


def _deadletters_replay(args: argparse.Namespace, engine: Engine) -> int:
    if bool(args.ids) == bool(args.all):
        raise UsageError("give dead letter ids or --all (not both)")
    try:
        results = replay_dead_letters(engine, None if args.all else args.ids)
    except (DeadLetterNotFound, NotAnOrderMessage) as err:
        raise UsageError(str(err)) from None
    for result in results:
        print(f"{result.dead_letter_id}: {result.outcome.kind.value}: "
              f"{escape(result.outcome.reason)}")
    failed = sum(r.outcome.kind is OutcomeKind.DEAD_LETTERED for r in results)
    print(f"replayed {len(results)}, {failed} still dead-lettered")
    return 1 if failed else 0


# -- parser and entry point ----------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=argparse.SUPPRESS, metavar="URL",
                        help="database URL (default $CPS_DATABASE_URL, else "
                             f"{ledger_db.DEFAULT_DATABASE_URL})")
    listing = argparse.ArgumentParser(add_help=False, parents=[common])
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    at = argparse.ArgumentParser(add_help=False, parents=[common])
    at.add_argument("--at", type=parse_at, default=None, metavar="ISO|MS",
                    help="when (ISO 8601, UTC without an offset, or ms); default now")

    parser = argparse.ArgumentParser(prog=PROG, parents=[common],
                                     description="Ledger schema, master data, dead letters.")
    groups = parser.add_subparsers(dest="group", required=True)

    def command(group: Any, name: str, handler: Handler, helptext: str,
                parents: Sequence[argparse.ArgumentParser] = (common,)
                ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(name, parents=list(parents),
                                                        help=helptext)
        sub.set_defaults(handler=handler)
        return sub

    db = groups.add_parser("db", help="schema migrations").add_subparsers(dest="cmd",
                                                                          required=True)
    command(db, "upgrade", _db_upgrade, "migrate the schema to the latest revision")
    command(db, "check", _db_check, "compare the database with ledger_db.schema")

    shop = groups.add_parser("shop", help="shops and their CPS periods").add_subparsers(
        dest="cmd", required=True)
    add = command(shop, "add", _shop_add, "add a shop")
    add.add_argument("shop")
    add.add_argument("--name", default="")
    add.add_argument("--cross-shop-opt-out", action="store_true",
                     help="refuse clicks of site-wide links")
    command(shop, "join", _shop_join, "the shop joins CPS", [at]).add_argument("shop")
    command(shop, "exit", _shop_exit, "the shop exits CPS", [at]).add_argument("shop")
    command(shop, "list", _shop_list, "list shops", [listing])

    channel = groups.add_parser("channel", help="channels and authorisations").add_subparsers(
        dest="cmd", required=True)
    add = command(channel, "add", _channel_add, "add a channel")
    add.add_argument("channel")
    add.add_argument("--name", default="")
    for name, handler in (("authorise", _channel_authorise), ("revoke", _channel_revoke)):
        grant = command(channel, name, handler, f"a shop {name}s the channel's app", [at])
        grant.add_argument("channel")
        grant.add_argument("shop")
    command(channel, "list", _channel_list, "list channels", [listing])

    promoter = groups.add_parser("promoter", help="promoters").add_subparsers(
        dest="cmd", required=True)
    add = command(promoter, "add", _promoter_add, "add a promoter")
    add.add_argument("promoter")
    add.add_argument("--account", help="the promoter's trade-system account (self-purchase)")
    add.add_argument("--self-purchase", choices=("allow", "deny", "default"),
                     default="default", help="default: the platform setting")
    add.add_argument("--webhook-url", help="where order status pushes go (later issue)")
    command(promoter, "list", _promoter_list, "list promoters", [listing])

    base = groups.add_parser("base", help="promoter bases").add_subparsers(
        dest="cmd", required=True)
    add = command(base, "add", _base_add, "add a promoter base")
    add.add_argument("base")
    add.add_argument("--shop", help="the base's shop (default: every shop)")
    add.add_argument("--name", default="")
    command(base, "list", _base_list, "list bases and members", [listing])
    member = base.add_parser("member", help="base members").add_subparsers(
        dest="member_cmd", required=True)
    add = command(member, "add", _base_member_add, "add a promoter to a base")
    add.add_argument("base")
    add.add_argument("promoter")

    letters = groups.add_parser("deadletters", help="messages that could not be used"
                                ).add_subparsers(dest="cmd", required=True)
    show = command(letters, "list", _deadletters_list, "list dead letters", [listing])
    show.add_argument("--limit", type=_positive, default=100)
    show.add_argument("--all", action="store_true", help="include replayed ones")
    show = command(letters, "show", _deadletters_show, "one dead letter, raw bytes escaped",
                   [listing])
    show.add_argument("id", type=_positive)
    replay = command(letters, "replay", _deadletters_replay,
                     "re-run dead letters (after fixing master data)")
    replay.add_argument("ids", nargs="*", type=_positive, metavar="ID")
    replay.add_argument("--all", action="store_true", help="every open dead letter")
    return parser


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive integer")
    return int(value)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as done:  # --help, or a usage error argparse already printed
        return done.code if isinstance(done.code, int) else 2
    if getattr(args, "at", "absent") is None:
        args.at = _now_ms()
    try:
        engine = ledger_db.connect(getattr(args, "db", None))
    except (ConfigError, DatabaseUrlError) as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    try:
        handler: Handler = args.handler
        return handler(args, engine)
    except (MasterDataError, UsageError) as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    except SQLAlchemyError as err:
        print(f"{PROG}: database error: {_database_problem(err)}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()


def _database_problem(err: SQLAlchemyError) -> str:
    text = ledger_db.database_problem(err)
    if "no such table" in text or ("relation" in text and "does not exist" in text):
        return f"{text} (run `{PROG} db upgrade` first)"
    return text


if __name__ == "__main__":
    sys.exit(main())
