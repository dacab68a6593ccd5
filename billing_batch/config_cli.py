"""``cps-billing rates|channel-rates|fees|activities|schedule``: billing master data.

    cps-billing rates add --level LEVEL --shop S [--product P] [--promoter PR] [--base B]
                          [--activity A] [--category C] --rate 12.5 [--leader-rate 3]
                          [--from ISO|MS] [--to ISO|MS] [--id RULE]
    cps-billing rates list [--shop S] [--at ISO|MS] [--json]
    cps-billing rates end RULE [--at ISO|MS]
    cps-billing rates edit RULE [--rate X] [--leader-rate Y] [--from ISO|MS]
    cps-billing channel-rates add --channel CH [--category C] --rate X [--from] [--to] [--id]
    cps-billing channel-rates list [--channel CH] [--at] [--json] | end RULE | edit RULE --rate X
    cps-billing fees add --kind platform_share|channel_fee|fans_share [--channel CH]
                         (--rate X | --bp N) [--from] [--to] [--id]
    cps-billing fees list [--kind K] [--channel CH] [--at] [--json] | end RULE | edit RULE
    cps-billing activities add ACTIVITY --shop S --leader PROMOTER [--name N]
    cps-billing activities join ACTIVITY PROMOTER [--at]    cps-billing activities list [--json]
    cps-billing schedule set --channel CH|'*' --participant KIND|'*' (--days N | --monthly)
    cps-billing schedule list [--json]    cps-billing schedule remove --channel --participant

``add_config_commands(subparsers)`` registers these groups on any parser (``cps-billing``
mounts them next to ``run``); ``main(argv)`` is a stand-alone parser with only them.  Each
leaf's ``handler(args) -> int`` opens the database itself: ``--database-url`` or
``CPS_DATABASE_URL`` (default ``sqlite:///var/ledger.db``), migrated to the latest schema
first (``ledger_db.migrate``, a no-op when current).

Input: rates are percentages with at most two decimals (``12.5`` = 1250 bp, see
``money.parse_percent_bp``), ``--bp`` takes basis points; times are ISO 8601 dates or
datetimes (UTC without an offset: ``2024-06-01`` is 2024-06-01T00:00:00Z) or ms since the
epoch; ``--from``/``--at`` default to now.  Ends and edits take effect now or later, never
in the past (``billing_batch.master_data``).  Tables print times in UTC; ``--json`` prints
ms and bp as integers.

Exit status: 0 done; 1 the database failed; 2 bad usage or input (the message says why),
never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

import ledger_db
from billing_batch import master_data as md
from billing_batch.money import BP_PER_UNIT, format_bp, parse_percent_bp
from billing_batch.pools import ParticipantKind
from billing_batch.rates import FeeKind, RateLevel
from billing_batch.schedule import ANY, ScheduleMode, ScheduleRule
from contracts.settings import ConfigError
from contracts.times import format_ms, parse_instant_ms
from ledger_db.engine import DatabaseUrlError

PROG = "cps-billing"

Handler = Callable[[argparse.Namespace], int]
if TYPE_CHECKING:
    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]
# A command: the parsed arguments, a connection in a transaction, now in ms -> exit status.
Command = Callable[[argparse.Namespace, Connection, int], int]


# -- input ---------------------------------------------------------------------------------

def parse_time(value: str) -> int:
    """ISO 8601 date or datetime (UTC without an offset) or integer ms -> ms since the epoch."""
    try:
        return parse_instant_ms(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _percent(value: str) -> int:
    try:
        return parse_percent_bp(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _bp(value: str) -> int:
    text = value.strip()
    if not text.isdigit() or int(text) > BP_PER_UNIT:
        raise argparse.ArgumentTypeError(
            f"{value!r}: basis points are an integer from 0 to {BP_PER_UNIT}")
    return int(text)


def _days(value: str) -> int:
    text = value.strip()
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r}: days are a whole number >= 0")
    return int(text)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- output --------------------------------------------------------------------------------

def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(headers)] + [[_printable(str(cell)) for cell in row] for row in rows]
    widths = [max(len(row[n]) for row in cells) for n in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths,
                                                                        strict=True)).rstrip()
                     for row in cells)


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _print_json(doc: object) -> None:
    print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())


def _validity(valid_from_ms: int, valid_to_ms: int | None) -> str:
    return f"from {format_ms(valid_from_ms)}" + (
        "" if valid_to_ms is None else f" until {format_ms(valid_to_ms)}")


def _version_json(row: Any, at_ms: int) -> dict[str, Any]:
    doc = dataclasses.asdict(row)
    doc["status"] = md.version_status(row.valid_from_ms, row.valid_to_ms, at_ms)
    return doc


def _print_versions(args: argparse.Namespace, rows: Sequence[Any], now_ms: int,
                    headers: Sequence[str], cells: Callable[[Any], tuple[object, ...]]) -> int:
    """A listing of versions: ``cells(row)``, then validity, status (at ``--at`` or now)."""
    at_ms = _or_now(args.at_ms, now_ms)
    if args.json:
        _print_json([_version_json(row, at_ms) for row in rows])
        return 0
    print(_table((*headers, "from", "to", "status", "supersedes"),
                 [(*cells(row), format_ms(row.valid_from_ms), format_ms(row.valid_to_ms),
                   md.version_status(row.valid_from_ms, row.valid_to_ms, at_ms),
                   row.supersedes or "-") for row in rows]))
    return 0


def _replaced(noun: str, old_id: str, new_id: str, from_ms: int, what: str) -> int:
    print(f"{noun} {old_id} ends at {format_ms(from_ms)}; {new_id} replaces it from then: "
          f"{what}")
    return 0


# -- rates ---------------------------------------------------------------------------------

def _rate_scope(row: md.RateRuleRow) -> str:
    parts = (("product", row.product_id), ("promoter", row.promoter_id), ("base", row.base_id),
             ("activity", row.activity_id), ("leader", row.leader_id),
             ("category", row.category_id))
    return " ".join(f"{name}={value}" for name, value in parts if value is not None) or "any item"


def _rates_add(args: argparse.Namespace, conn: Connection, now_ms: int) -> int:
    row = md.add_rate_rule(
        conn, level=args.level, shop_id=args.shop, rate_bp=args.rate,
        leader_rate_bp=args.leader_rate, valid_from_ms=_or_now(args.from_ms, now_ms),
        valid_to_ms=args.to_ms, product_id=args.product, promoter_id=args.promoter,
        base_id=args.base, activity_id=args.activity, category_id=args.category,
        rule_id=args.id, now_ms=now_ms)
    leader = "" if row.leader_rate_bp is None else f" + leader {format_bp(row.leader_rate_bp)}"
    print(f"rate rule {row.rule_id} added: {row.level} shop {row.shop_id} {_rate_scope(row)} "
          f"{format_bp(row.rate_bp)}{leader} {_validity(row.valid_from_ms, row.valid_to_ms)}")
    return 0


def _rates_list(args: argparse.Namespace, conn: Connection, now_ms: int) -> int:
    rows = md.list_rate_rules(conn, shop_id=args.shop, at_ms=args.at_ms)
    return _print_versions(
        args, rows, now_ms, ("rule", "level", "shop", "matches", "rate", "leader rate"),
        lambda row: (row.rule_id, row.level, row.shop_id, _rate_scope(row),
                     format_bp(row.rate_bp),
                     "-" if row.leader_rate_bp is None else format_bp(row.leader_rate_bp)))


def _rates_edit(args: argparse.Namespace, conn: Connection, now_ms: int) -> int:
    from_ms = _or_now(args.from_ms, now_ms)
    new_id = md.edit_rate_rule(conn, args.rule, from_ms, now_ms=now_ms, rate_bp=args.rate,
                               leader_rate_bp=args.leader_rate)
    rates = [f"{label} {format_bp(value)}" for label, value in
             (("rate", args.rate), ("leader rate", args.leader_rate)) if value is not None]
    return _replaced("rate rule", args.rule, new_id, from_ms, ", ".join(rates))


# -- channel rates -------------------------------------------------------------------------

def _channel_rates_add(args: argparse.Namespace, conn: Connection, now_ms: int) -> int:
    row = md.add_channel_rate(conn, channel_id=args.channel, category_id=args.category,
                              rate_bp=args.rate, valid_from_ms=_or_now(args.from_ms, now_ms),
                              valid_to_ms=args.to_ms, rule_id=args.id, now_ms=now_ms)
    scope = "channel-wide" if row.category_id is None else f"category {row.category_id}"
    print(f"channel rate {row.rule_id} added: channel {row.channel_id} {scope} "
          f"{format_bp(row.rate_bp)} {_validity(row.valid_from_ms, row.valid_to_ms)}")
    return 0


def _channel_rates_list(args: argparse.Namespace, conn: Connection, now_ms: int) -> int:
    rows = md.list_channel_rates(conn, channel_id=args.channel, at_ms=args.at_ms)
    return _print_versions(
        args, rows, now_ms, ("rule", "channel", "category", "rate"),
        lambda row: (row.rule_id, row.channel_id, row.category_id or "(channel-wide)",
                     format_bp(row.rate_bp)))


def _channel_rates_edit(args: argparse.Namespace, conn: Connection, now_ms: int) -> int:
    from_ms = _or_now(args.from_ms, now_ms)
    new_id = md.edit_channel_rate(conn, args.rule, from_ms, now_ms=now_ms, rate_bp=args.rate)
    return _replaced("channel rate", args.rule, new_id, from_ms, format_bp(args.rate))


# -- fees ----------------------------------------------------------------------------------

def _fee_bp(args: argparse.Namespace) -> int:
    return int(args.rate if args.rate is not None else args.bp)


def _fees_add(args: argparse.Namespace, conn: Connection, now_ms: int) -> int:
    row = md.add_fee_setting(conn, kind=args.kind, channel_id=args.channel, bp=_fee_bp(args),
                             valid_from_ms=_or_now(args.from_ms, now_ms),
                             valid_to_ms=args.to_ms, rule_id=args.id, now_ms=now_ms)
    where = "platform-wide" if row.channel_id is None else f"channel {row.channel_id}"
    print(f"fee setting {row.rule_id} added: {row.kind} {where} {format_bp(row.bp)} "
          f"({row.bp} bp) {_validity(row.valid_from_ms, row.valid_to_ms)}")
    return 0


def _fees_list(args: argparse.Namespace, conn: Connection, now_ms: int) -> int:
    rows = md.list_fee_settings(conn, kind=None if args.kind is None else FeeKind(args.kind),
                                channel_id=args.channel, at_ms=args.at_ms)
    return _print_versions(
        args, rows, now_ms, ("rule", "kind", "channel", "rate"),
        lambda row: (row.rule_id, row.kind, row.channel_id or "(platform-wide)",
                     format_bp(row.bp)))


def _fees_edit(args: argparse.Namespace, conn: Connection, now_ms: int) -> int:
    from_ms = _or_now(args.from_ms, now_ms)
    new_id = md.edit_fee_setting(conn, args.rule, from_ms, now_ms=now_ms, bp=_fee_bp(args))
    return _replaced("fee setting", args.rule, new_id, from_ms, format_bp(_fee_bp(args)))


# -- ending versions (rates, channel rates, fees) ------------------------------------------

def _ender(noun: str, end: Callable[..., None]) -> Command:
    def command(args: argparse.Namespace, conn: Connection, now_ms: int) -> int:
        at_ms = _or_now(args.at_ms, now_ms)
        end(conn, args.rule, at_ms, now_ms=now_ms)
        print(f"{noun} {args.rule} ends at {format_ms(at_ms)}")
        return 0
    return command


# -- activities ----------------------------------------------------------------------------

def _activities_add(args: argparse.Namespace, conn: Connection, now_ms: int) -> int:
    md.add_activity(conn, args.activity, shop_id=args.shop, leader_id=args.leader,
                    name=args.name, now_ms=now_ms)
    print(f"activity {args.activity} added: shop {args.shop}, leader {args.leader}")
    return 0


def _activities_join(args: argparse.Namespace, conn: Connection, now_ms: int) -> int:
    at_ms = _or_now(args.at_ms, now_ms)
    md.join_activity(conn, args.activity, args.promoter, at_ms=at_ms)
    print(f"promoter {args.promoter} joined activity {args.activity} at {format_ms(at_ms)}")
    return 0


def _activities_list(args: argparse.Namespace, conn: Connection, now_ms: int) -> int:
    found = md.list_activities(conn)
    if args.json:
        _print_json([{**dataclasses.asdict(a), "members": [
            {"promoter_id": p, "joined_at_ms": at} for p, at in a.members]} for a in found])
        return 0
    print(_table(("activity", "shop", "leader", "name", "members"),
                 [(a.activity_id, a.shop_id, a.leader_id, a.name or "-",
                   ", ".join(p for p, _ in a.members) or "-") for a in found]))
    return 0


# -- schedules -----------------------------------------------------------------------------

def _schedule_set(args: argparse.Namespace, conn: Connection, now_ms: int) -> int:
    mode = ScheduleMode.MONTHLY if args.monthly else ScheduleMode.DELAY
    try:
        rule = ScheduleRule(args.channel, args.participant, mode,
                            15 if args.days is None else args.days)
    except ValueError as err:
        raise md.MasterDataError(str(err)) from None
    replaced = md.set_schedule(conn, rule, now_ms=now_ms)
    print(f"schedule {'replaced' if replaced else 'set'}: channel {rule.channel_id} "
          f"participant {rule.participant_kind}: {rule.describe()}")
    return 0


def _schedule_list(args: argparse.Namespace, conn: Connection, now_ms: int) -> int:
    rows = md.list_schedules(conn)
    if args.json:
        _print_json([{"channel_id": r.rule.channel_id,
                      "participant_kind": r.rule.participant_kind, "mode": r.rule.mode,
                      "delay_days": r.rule.delay_days, "updated_at_ms": r.updated_at_ms}
                     for r in rows])
        return 0
    print(_table(("channel", "participant", "schedule", "updated"),
                 [(r.rule.channel_id, r.rule.participant_kind, r.rule.describe(),
                   format_ms(r.updated_at_ms)) for r in rows]))
    if (ANY, ANY) not in {r.rule.key for r in rows}:
        print("anything else: T+15 days after received (the default)")
    return 0


def _schedule_remove(args: argparse.Namespace, conn: Connection, now_ms: int) -> int:
    md.remove_schedule(conn, args.channel, args.participant)
    print(f"schedule removed: channel {args.channel} participant {args.participant}")
    return 0


# -- running a command ---------------------------------------------------------------------

def _or_now(at_ms: int | None, now_ms: int) -> int:
    return now_ms if at_ms is None else at_ms


def _handler(command: Command) -> Handler:
    """Opens and migrates the database, runs ``command`` in one transaction, turns every
    failure into a message and an exit status."""
    def handler(args: argparse.Namespace) -> int:
        try:
            engine = ledger_db.connect(getattr(args, "database_url", None))
        except (ConfigError, DatabaseUrlError) as err:
            print(f"{PROG}: {err}", file=sys.stderr)
            return 2
        try:
            ledger_db.migrate(engine)
            with engine.begin() as conn:
                return command(args, conn, _now_ms())
        except md.MasterDataError as err:
            print(f"{PROG}: {_printable(str(err))}", file=sys.stderr)
            return 2
        except SQLAlchemyError as err:
            problem = ledger_db.database_problem(err)
            print(f"{PROG}: database error: {problem}", file=sys.stderr)
            return 1
        finally:
            engine.dispose()
    return handler


class _Builder:
    """Adds leaf commands, each with ``--database-url`` (not overriding the parent's)."""

    def __init__(self) -> None:
        self.common = argparse.ArgumentParser(add_help=False)
        self.common.add_argument(
            "--database-url", default=argparse.SUPPRESS, metavar="URL",
            help="database URL (default $CPS_DATABASE_URL, else "
                 f"{ledger_db.DEFAULT_DATABASE_URL})")

    def group(self, subparsers: _Subparsers, name: str, helptext: str) -> _Subparsers:
        parser = subparsers.add_parser(name, help=helptext, description=helptext)
        return parser.add_subparsers(dest=f"{name.replace('-', '_')}_command", required=True)

    def command(self, group: _Subparsers, name: str, command: Command,
                helptext: str) -> argparse.ArgumentParser:
        leaf: argparse.ArgumentParser = group.add_parser(name, parents=[self.common],
                                                         help=helptext, description=helptext)
        leaf.set_defaults(handler=_handler(command))
        return leaf


def _validity_options(leaf: argparse.ArgumentParser) -> None:
    leaf.add_argument("--from", dest="from_ms", type=parse_time, metavar="ISO|MS",
                      help="valid from (default now)")
    leaf.add_argument("--to", dest="to_ms", type=parse_time, metavar="ISO|MS",
                      help="valid until, exclusive (default open ended)")
    leaf.add_argument("--id", help="the rule id (default generated)")


def _listing_options(leaf: argparse.ArgumentParser) -> None:
    leaf.add_argument("--at", dest="at_ms", type=parse_time, metavar="ISO|MS",
                      help="only the versions valid at that time")
    leaf.add_argument("--json", action="store_true", help="machine-readable output")


def _end_and_edit(build: _Builder, group: _Subparsers,
                  noun: str, end: Callable[..., None], edit: Command) -> argparse.ArgumentParser:
    leaf = build.command(group, "end", _ender(noun, end), f"end a {noun} (now or later)")
    leaf.add_argument("rule")
    leaf.add_argument("--at", dest="at_ms", type=parse_time, metavar="ISO|MS",
                      help="when it ends (default now; never in the past)")
    leaf = build.command(group, "edit", edit,
                         f"a new version of a {noun} from a time on (the old one ends then)")
    leaf.add_argument("rule")
    leaf.add_argument("--from", dest="from_ms", type=parse_time, metavar="ISO|MS",
                      help="when the new version starts (default now; never in the past)")
    return leaf


def _add_rates(build: _Builder, subparsers: _Subparsers
               ) -> None:
    group = build.group(subparsers, "rates", "CPS commission rates (SPEC 8)")
    leaf = build.command(group, "add", _rates_add, "add a rate rule")
    leaf.add_argument("--level", required=True, choices=[level.value for level in RateLevel])
    leaf.add_argument("--shop", required=True)
    for name, helptext in (("product", "targeted_product, targeted_base (else whole shop), "
                                       "group_leader, generic_product"),
                           ("promoter", "targeted_product"), ("base", "targeted_base"),
                           ("activity", "group_leader"), ("category", "shop_category")):
        leaf.add_argument(f"--{name}", help=helptext)
    leaf.add_argument("--rate", required=True, type=_percent, metavar="PERCENT")
    leaf.add_argument("--leader-rate", type=_percent, metavar="PERCENT",
                      help="group_leader: the group-leader pool's rate")
    _validity_options(leaf)
    leaf = build.command(group, "list", _rates_list, "list rate rules and their versions")
    leaf.add_argument("--shop")
    _listing_options(leaf)
    leaf = _end_and_edit(build, group, "rate rule", md.end_rate_rule, _rates_edit)
    leaf.add_argument("--rate", type=_percent, metavar="PERCENT")
    leaf.add_argument("--leader-rate", type=_percent, metavar="PERCENT")


def _add_channel_rates(build: _Builder,
                       subparsers: _Subparsers
                       ) -> None:
    group = build.group(subparsers, "channel-rates", "self-operated channel rates")
    leaf = build.command(group, "add", _channel_rates_add, "add a channel rate")
    leaf.add_argument("--channel", required=True)
    leaf.add_argument("--category", help="the item category (default channel-wide)")
    leaf.add_argument("--rate", required=True, type=_percent, metavar="PERCENT")
    _validity_options(leaf)
    leaf = build.command(group, "list", _channel_rates_list, "list channel rates")
    leaf.add_argument("--channel")
    _listing_options(leaf)
    leaf = _end_and_edit(build, group, "channel rate", md.end_channel_rate, _channel_rates_edit)
    leaf.add_argument("--rate", required=True, type=_percent, metavar="PERCENT")


def _fee_amount(leaf: argparse.ArgumentParser) -> None:
    amount = leaf.add_mutually_exclusive_group(required=True)
    amount.add_argument("--rate", type=_percent, metavar="PERCENT")
    amount.add_argument("--bp", type=_bp, metavar="N", help="basis points (1 bp = 0.01 %%)")


def _add_fees(build: _Builder, subparsers: _Subparsers
              ) -> None:
    group = build.group(subparsers, "fees", "platform share, channel fee, fans share")
    kinds = [kind.value for kind in FeeKind]
    leaf = build.command(group, "add", _fees_add, "add a fee setting")
    leaf.add_argument("--kind", required=True, choices=kinds)
    leaf.add_argument("--channel", help="channel_fee, fans_share: required; platform_share: "
                                        "a channel's override (default platform-wide)")
    _fee_amount(leaf)
    _validity_options(leaf)
    leaf = build.command(group, "list", _fees_list, "list fee settings")
    leaf.add_argument("--kind", choices=kinds)
    leaf.add_argument("--channel")
    _listing_options(leaf)
    _fee_amount(_end_and_edit(build, group, "fee setting", md.end_fee_setting, _fees_edit))


def _add_activities(build: _Builder,
                    subparsers: _Subparsers
                    ) -> None:
    group = build.group(subparsers, "activities", "group-leader activities")
    leaf = build.command(group, "add", _activities_add, "add a group-leader activity")
    leaf.add_argument("activity")
    leaf.add_argument("--shop", required=True)
    leaf.add_argument("--leader", required=True, help="the group leader's promoter id")
    leaf.add_argument("--name", default="")
    leaf = build.command(group, "join", _activities_join, "a promoter joins an activity")
    leaf.add_argument("activity")
    leaf.add_argument("promoter")
    leaf.add_argument("--at", dest="at_ms", type=parse_time, metavar="ISO|MS",
                      help="when (default now)")
    leaf = build.command(group, "list", _activities_list, "list activities and members")
    leaf.add_argument("--json", action="store_true", help="machine-readable output")


def _add_schedule(build: _Builder, subparsers: _Subparsers
                  ) -> None:
    group = build.group(subparsers, "schedule", "when settlement pays (SPEC 11)")
    kinds = f"a participant kind ({', '.join(ParticipantKind)}) or '{ANY}'"
    leaf = build.command(group, "set", _schedule_set, "set the schedule of a channel and kind")
    leaf.add_argument("--channel", required=True, help=f"a channel id or '{ANY}'")
    leaf.add_argument("--participant", required=True, help=kinds)
    when = leaf.add_mutually_exclusive_group(required=True)
    when.add_argument("--days", type=_days, help="T+N days after received")
    when.add_argument("--monthly", action="store_true",
                      help="on the 1st, every order final before that month")
    leaf = build.command(group, "list", _schedule_list, "list schedules")
    leaf.add_argument("--json", action="store_true", help="machine-readable output")
    leaf = build.command(group, "remove", _schedule_remove, "remove a schedule")
    leaf.add_argument("--channel", required=True)
    leaf.add_argument("--participant", required=True, help=kinds)


def add_config_commands(subparsers: _Subparsers) -> None:
    """Registers ``rates``, ``channel-rates``, ``fees``, ``activities`` and ``schedule``;
    every leaf sets ``handler(args) -> int``."""
    build = _Builder()
    for add in (_add_rates, _add_channel_rates, _add_fees, _add_activities, _add_schedule):
        add(build, subparsers)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Billing master data.")
    parser.add_argument("--database-url", default=argparse.SUPPRESS, metavar="URL",
                        help="database URL (default $CPS_DATABASE_URL)")
    add_config_commands(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or a usage error argparse already printed
        return done.code if isinstance(done.code, int) else 2
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
