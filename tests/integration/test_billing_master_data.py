"""Billing master data on SQLite and PostgreSQL: versions that never rewrite history, the
references they check, the loaders the batch builds its books from, and the CLI."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from sqlalchemy import Connection, Engine, select

from billing_batch import master_data as md
from billing_batch.config_cli import add_config_commands, main, parse_time
from billing_batch.rates import FeeKind, LineKey, RateLevel
from billing_batch.schedule import ANY, DAY_MS, ScheduleMode, ScheduleRule
from contracts.times import format_ms
from ledger_db import master_data as admin
from ledger_db.schema import rate_rules
from tests.integration.db import ledger_engine, ledger_url  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z
NOW = T0 + 30 * DAY_MS
LATER = NOW + 10 * DAY_MS
SHOP, OTHER_SHOP, PROMOTER, LEADER, CHANNEL = "s-1", "s-2", "p-1", "p-lead", "live-1"


def _master(conn: Connection) -> None:
    for shop in (SHOP, OTHER_SHOP):
        admin.add_shop(conn, shop, now_ms=T0)
    for promoter in (PROMOTER, LEADER, "p-2"):
        admin.add_promoter(conn, promoter, now_ms=T0)
    admin.add_channel(conn, CHANNEL, now_ms=T0)
    admin.add_base(conn, "b-shop", now_ms=T0, shop_id=SHOP)
    admin.add_base(conn, "b-other", now_ms=T0, shop_id=OTHER_SHOP)
    admin.add_base(conn, "b-all", now_ms=T0)
    admin.add_base_member(conn, "b-shop", PROMOTER)
    admin.add_base_member(conn, "b-all", PROMOTER)


@pytest.fixture
def conn(ledger_engine: Engine) -> Any:  # noqa: F811
    with ledger_engine.begin() as connection:
        _master(connection)
        yield connection


def _key(at_ms: int, product: str = "x", promoter: str | None = PROMOTER,
         memberships: md.Memberships | None = None) -> LineKey:
    if memberships is not None:
        return memberships.line_key(shop_id=SHOP, product_id=product, category_id="c-1",
                                    promoter_id=promoter, paid_at_ms=at_ms)
    return LineKey(SHOP, product, "c-1", promoter, paid_at_ms=at_ms)


# -- rate rules ----------------------------------------------------------------------------

def test_an_edit_is_a_new_version_and_the_past_keeps_its_rate(conn: Connection) -> None:
    first = md.add_rate_rule(conn, level=RateLevel.SHOP_GENERIC, shop_id=SHOP, rate_bp=1000,
                             valid_from_ms=T0, now_ms=T0)
    assert first.rule_id == "rr-000001"
    second = md.edit_rate_rule(conn, first.rule_id, LATER, now_ms=NOW, rate_bp=1500)
    third = md.edit_rate_rule(conn, second, LATER + DAY_MS, now_ms=NOW, rate_bp=1600)
    assert (second, third) == ("rr-000001.v2", "rr-000001.v3")
    rows = {row.rule_id: row for row in md.list_rate_rules(conn)}
    assert (rows[first.rule_id].valid_from_ms, rows[first.rule_id].valid_to_ms) == (T0, LATER)
    assert (rows[second].valid_from_ms, rows[second].valid_to_ms) == (LATER, LATER + DAY_MS)
    assert (rows[third].valid_to_ms, rows[third].supersedes) == (None, second)
    assert rows[second].supersedes == first.rule_id
    assert rows[third].created_at_ms == NOW
    book = md.load_rate_book(conn)
    for at_ms, rule_id, rate_bp in ((NOW, first.rule_id, 1000), (LATER - 1, first.rule_id, 1000),
                                    (LATER, second, 1500), (LATER + DAY_MS, third, 1600)):
        choice = book.lookup(_key(at_ms))
        assert choice is not None
        assert (choice.rule_id, choice.rate_bp) == (rule_id, rate_bp), at_ms
    assert book.lookup(_key(T0 - 1)) is None


def test_an_edit_keeps_the_old_end(conn: Connection) -> None:
    rule = md.add_rate_rule(conn, level="shop_category", shop_id=SHOP, rate_bp=800,
                            category_id="c-1", valid_from_ms=T0, valid_to_ms=LATER + DAY_MS,
                            now_ms=T0)
    new_id = md.edit_rate_rule(conn, rule.rule_id, LATER, now_ms=NOW, rate_bp=900)
    row = next(r for r in md.list_rate_rules(conn) if r.rule_id == new_id)
    assert (row.valid_from_ms, row.valid_to_ms, row.category_id) == (LATER, LATER + DAY_MS, "c-1")
    assert md.list_rate_rules(conn, at_ms=LATER + DAY_MS) == []
    assert [r.rule_id for r in md.list_rate_rules(conn, at_ms=LATER)] == [new_id]


def test_end_never_reaches_into_the_past(conn: Connection) -> None:
    rule = md.add_rate_rule(conn, level="shop_generic", shop_id=SHOP, rate_bp=1000,
                            valid_from_ms=T0, now_ms=T0)
    with pytest.raises(md.MasterDataError, match="in the past"):
        md.end_rate_rule(conn, rule.rule_id, NOW - 1, now_ms=NOW)
    with pytest.raises(md.MasterDataError, match="in the past"):
        md.edit_rate_rule(conn, rule.rule_id, NOW - 1, now_ms=NOW, rate_bp=5)
    md.end_rate_rule(conn, rule.rule_id, LATER, now_ms=NOW)
    with pytest.raises(md.MasterDataError, match="already ends at"):
        md.end_rate_rule(conn, rule.rule_id, LATER, now_ms=NOW)
    with pytest.raises(md.MasterDataError, match="already ends at"):
        md.edit_rate_rule(conn, rule.rule_id, LATER + 1, now_ms=NOW, rate_bp=5)
    md.end_rate_rule(conn, rule.rule_id, NOW, now_ms=NOW)  # earlier, but not in the past
    assert md.list_rate_rules(conn)[0].valid_to_ms == NOW
    with pytest.raises(md.MasterDataError, match="no rate rule 'rr-404'"):
        md.end_rate_rule(conn, "rr-404", LATER, now_ms=NOW)
    with pytest.raises(md.MasterDataError, match="new rate"):
        md.edit_rate_rule(conn, rule.rule_id, LATER, now_ms=NOW)


def test_a_version_that_has_not_started_can_be_cancelled(conn: Connection) -> None:
    rule = md.add_rate_rule(conn, level="shop_generic", shop_id=SHOP, rate_bp=1000,
                            valid_from_ms=LATER, now_ms=NOW)
    with pytest.raises(md.MasterDataError, match="starts at"):
        md.end_rate_rule(conn, rule.rule_id, LATER - 1, now_ms=NOW)
    md.end_rate_rule(conn, rule.rule_id, LATER, now_ms=NOW)
    (row,) = md.list_rate_rules(conn)
    assert md.version_status(row.valid_from_ms, row.valid_to_ms, NOW) == "cancelled"
    assert len(md.load_rate_book(conn)) == 0
    # A future version edited from its own start: the old one is cancelled, the new one
    # takes its whole period.
    other = md.add_rate_rule(conn, level="shop_generic", shop_id=SHOP, rate_bp=1000,
                             valid_from_ms=LATER, now_ms=NOW)
    new_id = md.edit_rate_rule(conn, other.rule_id, LATER, now_ms=NOW, rate_bp=1200)
    book = md.load_rate_book(conn)
    assert len(book) == 1
    choice = book.lookup(_key(LATER))
    assert choice is not None
    assert (choice.rule_id, choice.rate_bp) == (new_id, 1200)


@pytest.mark.parametrize(("fields", "message"), [
    ({"level": "targeted_product", "product_id": "x", "promoter_id": "nobody"},
     "no promoter 'nobody'"),
    ({"level": "targeted_product", "product_id": "x"}, "promoter_id: required"),
    ({"level": "targeted_base", "base_id": "b-404"}, "no promoter base 'b-404'"),
    ({"level": "targeted_base", "base_id": "b-other"}, "belongs to shop 's-2'"),
    ({"level": "group_leader", "product_id": "x", "activity_id": "a-404",
      "leader_rate_bp": 300}, "no group-leader activity 'a-404'"),
    ({"level": "group_leader", "product_id": "x", "activity_id": "a-other",
      "leader_rate_bp": 300}, "belongs to shop 's-2'"),
    ({"level": "group_leader", "product_id": "x", "activity_id": "a-1"}, "leader_rate_bp"),
    ({"level": "group_leader", "product_id": "x", "activity_id": "a-1", "rate_bp": 9800,
      "leader_rate_bp": 300}, "exceeds 10000"),
    ({"level": "generic_product"}, "product_id: required"),
    ({"level": "shop_generic", "category_id": "c-1"}, "category_id: must be None"),
    ({"level": "shop_generic", "shop_id": "s-404"}, "no shop 's-404'"),
    ({"level": "shop_generic", "rate_bp": 10001}, "rate_bp"),
    ({"level": "everything"}, "level: must be one of"),
    ({"level": "shop_generic", "valid_to_ms": T0}, "at or before it starts"),
    ({"level": "shop_generic", "rule_id": "bad id"}, "must match"),
])
def test_bad_rules_are_refused(conn: Connection, fields: dict[str, Any], message: str) -> None:
    md.add_activity(conn, "a-1", shop_id=SHOP, leader_id=LEADER, now_ms=T0)
    md.add_activity(conn, "a-other", shop_id=OTHER_SHOP, leader_id=LEADER, now_ms=T0)
    arguments: dict[str, Any] = {"shop_id": SHOP, "rate_bp": 1000, "valid_from_ms": T0,
                                 "now_ms": NOW, **fields}
    with pytest.raises(md.MasterDataError, match=message):
        md.add_rate_rule(conn, **arguments)
    assert conn.execute(select(rate_rules)).first() is None


def test_every_level_loads_into_the_book_with_memberships(conn: Connection) -> None:
    md.add_activity(conn, "a-1", shop_id=SHOP, leader_id=LEADER, name="Summer", now_ms=T0)
    md.join_activity(conn, "a-1", PROMOTER, at_ms=NOW)
    add: dict[str, Any] = {"shop_id": SHOP, "valid_from_ms": T0, "now_ms": T0}
    md.add_rate_rule(conn, level="shop_generic", rate_bp=100, rule_id="r-generic", **add)
    md.add_rate_rule(conn, level="shop_category", rate_bp=200, category_id="c-1",
                     rule_id="r-category", **add)
    md.add_rate_rule(conn, level="generic_product", rate_bp=300, product_id="p-generic",
                     rule_id="r-product", **add)
    md.add_rate_rule(conn, level="group_leader", rate_bp=400, leader_rate_bp=50,
                     product_id="p-leader", activity_id="a-1", rule_id="r-leader", **add)
    md.add_rate_rule(conn, level="targeted_base", rate_bp=500, base_id="b-all",
                     rule_id="r-base", **add)
    md.add_rate_rule(conn, level="targeted_product", rate_bp=600, product_id="p-target",
                     promoter_id=PROMOTER, rule_id="r-target", **add)
    book, members = md.load_rate_book(conn), md.load_memberships(conn)
    assert members.bases_of(PROMOTER) == {"b-shop", "b-all"}
    assert members.activities_of(PROMOTER) == {"a-1"}
    assert members.activities_of(PROMOTER, NOW - 1) == frozenset()
    assert members.activities_of("p-2") == frozenset()

    def chosen(at_ms: int, product: str, promoter: str | None) -> str | None:
        choice = book.lookup(_key(at_ms, product, promoter, members))
        return None if choice is None else choice.rule_id

    assert chosen(NOW, "p-target", PROMOTER) == "r-target"
    assert chosen(NOW, "p-leader", PROMOTER) == "r-base"  # the whole-shop base rule outranks
    assert chosen(NOW, "p-other", None) == "r-category"
    assert chosen(NOW, "p-generic", "p-2") == "r-product"
    leader = book.lookup(_key(NOW, "p-leader", "p-2", members))
    assert leader is not None
    assert leader.rule_id == "r-category"  # p-2 never joined the activity
    (row,) = [r for r in md.list_rate_rules(conn) if r.rule_id == "r-leader"]
    assert (row.leader_id, row.leader_rate_bp) == (LEADER, 50)
    # Without the base rule, the activity's rule applies from the join on.
    md.end_rate_rule(conn, "r-base", NOW, now_ms=NOW)
    book = md.load_rate_book(conn)
    choice = book.lookup(_key(NOW, "p-leader", PROMOTER, members))
    assert choice is not None
    assert (choice.rule_id, choice.leader_id, choice.leader_rate_bp) == ("r-leader", LEADER, 50)
    assert chosen(NOW - 1, "p-leader", PROMOTER) == "r-base"  # history: base rule still there


def test_generated_ids_skip_taken_ones_and_chosen_ids_are_unique(conn: Connection) -> None:
    md.add_rate_rule(conn, level="shop_generic", shop_id=SHOP, rate_bp=1, valid_from_ms=T0,
                     now_ms=T0, rule_id="rr-000002")
    assert md.add_rate_rule(conn, level="shop_generic", shop_id=SHOP, rate_bp=1,
                            valid_from_ms=T0, now_ms=T0).rule_id == "rr-000003"
    with pytest.raises(md.MasterDataError, match="already exists"):
        md.add_rate_rule(conn, level="shop_generic", shop_id=SHOP, rate_bp=1,
                         valid_from_ms=T0, now_ms=T0, rule_id="rr-000002")


# -- channel rates and fees ------------------------------------------------------------------

def test_channel_rates_per_category_else_channel_wide(conn: Connection) -> None:
    wide = md.add_channel_rate(conn, channel_id=CHANNEL, rate_bp=500, valid_from_ms=T0,
                               now_ms=T0)
    food = md.add_channel_rate(conn, channel_id=CHANNEL, category_id="food", rate_bp=800,
                               valid_from_ms=T0, now_ms=T0)
    assert (wide.rule_id, food.rule_id) == ("cr-000001", "cr-000002")
    new_id = md.edit_channel_rate(conn, food.rule_id, LATER, now_ms=NOW, rate_bp=900)
    book = md.load_channel_rate_book(conn)
    for category, at_ms, expected in (("food", NOW, (food.rule_id, 800)),
                                      ("food", LATER, (new_id, 900)),
                                      ("toys", LATER, (wide.rule_id, 500)),
                                      (None, NOW, (wide.rule_id, 500))):
        choice = book.lookup(CHANNEL, category, at_ms)
        assert choice is not None
        assert (choice.rule_id, choice.rate_bp) == expected
    with pytest.raises(md.MasterDataError, match="no channel 'nowhere'"):
        md.add_channel_rate(conn, channel_id="nowhere", rate_bp=1, valid_from_ms=T0, now_ms=T0)
    md.end_channel_rate(conn, wide.rule_id, LATER, now_ms=NOW)
    assert [r.rule_id for r in md.list_channel_rates(conn, at_ms=LATER)] == [new_id]
    assert len(md.list_channel_rates(conn, channel_id=CHANNEL)) == 3


def test_fee_settings_and_the_channel_override(conn: Connection) -> None:
    md.add_fee_setting(conn, kind="platform_share", bp=1000, valid_from_ms=T0, now_ms=T0)
    md.add_fee_setting(conn, kind=FeeKind.CHANNEL_FEE, channel_id=CHANNEL, bp=500,
                       valid_from_ms=T0, now_ms=T0)
    override = md.add_fee_setting(conn, kind="platform_share", channel_id=CHANNEL, bp=1200,
                                  valid_from_ms=T0, now_ms=T0)
    fans = md.add_fee_setting(conn, kind="fans_share", channel_id=CHANNEL, bp=100,
                              valid_from_ms=T0, now_ms=T0)
    new_fans = md.edit_fee_setting(conn, fans.rule_id, LATER, now_ms=NOW, bp=150)
    fees = md.load_fee_book(conn).lookup(CHANNEL, NOW)
    assert (fees.platform_share_bp, fees.channel_fee_bp, fees.fans_share_bp) == (1200, 500, 100)
    assert fees.platform_share_rule_id == override.rule_id
    assert md.load_fee_book(conn).lookup(CHANNEL, LATER).fans_share_rule_id == new_fans
    assert md.load_fee_book(conn).lookup(None, NOW).platform_share_bp == 1000
    with pytest.raises(md.MasterDataError, match="channel_id"):
        md.add_fee_setting(conn, kind="channel_fee", bp=1, valid_from_ms=T0, now_ms=T0)
    with pytest.raises(md.MasterDataError, match="kind"):
        md.add_fee_setting(conn, kind="tip", bp=1, valid_from_ms=T0, now_ms=T0)
    with pytest.raises(md.MasterDataError, match="no channel"):
        md.add_fee_setting(conn, kind="channel_fee", channel_id="x", bp=1, valid_from_ms=T0,
                           now_ms=T0)
    kinds = [row.kind for row in md.list_fee_settings(conn)]
    assert kinds == sorted(kinds, key=list(FeeKind).index)
    assert len(md.list_fee_settings(conn, kind=FeeKind.FANS_SHARE)) == 2
    md.end_fee_setting(conn, override.rule_id, LATER, now_ms=NOW)
    assert md.load_fee_book(conn).lookup(CHANNEL, LATER).platform_share_bp == 1000


# -- activities and schedules ----------------------------------------------------------------

def test_activities(conn: Connection) -> None:
    md.add_activity(conn, "a-1", shop_id=SHOP, leader_id=LEADER, name="Summer", now_ms=T0)
    md.join_activity(conn, "a-1", PROMOTER, at_ms=NOW)
    md.join_activity(conn, "a-1", "p-2", at_ms=LATER)
    cases: list[tuple[Callable[[], object], str]] = [
            (lambda: md.add_activity(conn, "a-1", shop_id=SHOP, leader_id=LEADER, now_ms=T0),
             "already exists"),
            (lambda: md.add_activity(conn, "a-2", shop_id="s-404", leader_id=LEADER,
                                     now_ms=T0), "no shop"),
            (lambda: md.add_activity(conn, "a-2", shop_id=SHOP, leader_id="nobody",
                                     now_ms=T0), "no promoter"),
            (lambda: md.add_activity(conn, "a 2", shop_id=SHOP, leader_id=LEADER, now_ms=T0),
             "must match"),
            (lambda: md.join_activity(conn, "a-1", PROMOTER, at_ms=NOW), "already"),
            (lambda: md.join_activity(conn, "a-404", PROMOTER, at_ms=NOW), "no activity"),
            (lambda: md.join_activity(conn, "a-1", "nobody", at_ms=NOW), "no promoter")]
    for call, message in cases:
        with pytest.raises(md.MasterDataError, match=message):
            call()
    (activity,) = md.list_activities(conn)
    assert activity == md.Activity("a-1", SHOP, LEADER, "Summer", T0,
                                   ((PROMOTER, NOW), ("p-2", LATER)))
    members = md.load_memberships(conn)
    assert members.activities_of("p-2", LATER - 1) == frozenset()
    assert members.activities_of("p-2", LATER) == {"a-1"}


def test_schedules_set_replace_remove_and_load(conn: Connection) -> None:
    t7 = ScheduleRule(CHANNEL, "promoter", ScheduleMode.DELAY, 7)
    assert md.set_schedule(conn, t7, now_ms=T0) is False
    assert md.set_schedule(conn, ScheduleRule(ANY, ANY, ScheduleMode.DELAY, 20),
                           now_ms=T0) is False
    assert md.set_schedule(conn, ScheduleRule(CHANNEL, "promoter", ScheduleMode.MONTHLY),
                           now_ms=NOW) is True
    rows = md.list_schedules(conn)
    assert [(r.rule.key, r.rule.mode, r.updated_at_ms) for r in rows] == [
        ((ANY, ANY), ScheduleMode.DELAY, T0), ((CHANNEL, "promoter"), ScheduleMode.MONTHLY, NOW)]
    schedule = md.load_schedule(conn)
    assert schedule.rule_for(CHANNEL, "promoter").mode is ScheduleMode.MONTHLY
    assert schedule.rule_for(CHANNEL, "channel").delay_days == 20
    md.remove_schedule(conn, ANY, ANY)
    assert md.load_schedule(conn).rule_for(CHANNEL, "channel").delay_days == 15
    with pytest.raises(md.MasterDataError, match="no schedule"):
        md.remove_schedule(conn, ANY, ANY)
    with pytest.raises(md.MasterDataError, match="no channel 'nowhere'"):
        md.set_schedule(conn, ScheduleRule("nowhere", ANY), now_ms=T0)


# -- the CLI -------------------------------------------------------------------------------

class Cli:
    def __init__(self, url: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.url, self.capsys = url, capsys

    def __call__(self, *argv: str, status: int = 0) -> str:
        self.capsys.readouterr()
        code = main(["--database-url", self.url, *argv])
        out, err = self.capsys.readouterr()
        assert code == status, (out, err)
        assert "Traceback" not in err
        return out + err

    def json(self, *argv: str) -> Any:
        return orjson.loads(self(*argv, "--json"))


@pytest.fixture
def cli(ledger_url: str, ledger_engine: Engine,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> Cli:
    with ledger_engine.begin() as connection:
        _master(connection)
    return Cli(ledger_url, capsys)


FUTURE = "2099-01-01"
FUTURE_MS = parse_time(FUTURE)


def test_cli_rates(cli: Cli) -> None:
    out = cli("rates", "add", "--level", "targeted_product", "--shop", SHOP, "--product", "x",
              "--promoter", PROMOTER, "--rate", "12.5", "--from", "2024-01-01")
    assert out == ("rate rule rr-000001 added: targeted_product shop s-1 product=x promoter=p-1 "
                   "12.5% from 2024-01-01 00:00:00.000Z\n")
    out = cli("rates", "edit", "rr-000001", "--rate", "15", "--from", FUTURE)
    assert "rr-000001 ends at 2099-01-01 00:00:00.000Z; rr-000001.v2 replaces it" in out
    table = cli("rates", "list", "--shop", SHOP)
    assert table.splitlines()[0].split() == ["rule", "level", "shop", "matches", "rate",
                                             "leader", "rate", "from", "to", "status",
                                             "supersedes"]
    assert "12.5%" in table
    assert "future  rr-000001" in table
    listed = cli.json("rates", "list")
    assert [(r["rule_id"], r["rate_bp"], r["status"], r["valid_to_ms"]) for r in listed] == [
        ("rr-000001", 1250, "active", FUTURE_MS), ("rr-000001.v2", 1500, "future", None)]
    at_future = cli.json("rates", "list", "--at", FUTURE)
    assert [r["rule_id"] for r in at_future] == ["rr-000001.v2"]
    assert cli.json("rates", "list", "--shop", OTHER_SHOP) == []
    assert "ends at 2099-06-01" in cli("rates", "end", "rr-000001.v2", "--at", "2099-06-01")
    cli("activities", "add", "a-1", "--shop", SHOP, "--leader", LEADER, "--name", "Summer")
    out = cli("rates", "add", "--level", "group_leader", "--shop", SHOP, "--product", "x",
              "--activity", "a-1", "--rate", "20", "--leader-rate", "3")
    assert "activity=a-1 leader=p-lead 20% + leader 3%" in out
    assert "leader rate 4%" in cli("rates", "edit", "rr-000003", "--leader-rate", "4", "--from",
                                   FUTURE)


def test_cli_channel_rates_fees_activities_and_schedule(cli: Cli) -> None:
    cli("channel-rates", "add", "--channel", CHANNEL, "--rate", "5")
    assert "category food 8%" in cli("channel-rates", "add", "--channel", CHANNEL,
                                     "--category", "food", "--rate", "8")
    assert "cr-000002.v2" in cli("channel-rates", "edit", "cr-000002", "--rate", "9",
                                 "--from", FUTURE)
    assert "(channel-wide)" in cli("channel-rates", "list")
    assert len(cli.json("channel-rates", "list", "--channel", CHANNEL)) == 3
    assert "ends at" in cli("channel-rates", "end", "cr-000001", "--at", FUTURE)

    assert "platform-wide 10% (1000 bp)" in cli("fees", "add", "--kind", "platform_share",
                                                "--rate", "10")
    assert "channel live-1 5% (500 bp)" in cli("fees", "add", "--kind", "channel_fee",
                                               "--channel", CHANNEL, "--bp", "500")
    assert "fee-000002.v2" in cli("fees", "edit", "fee-000002", "--bp", "600", "--from", FUTURE)
    fees = cli.json("fees", "list", "--kind", "channel_fee")
    assert [(f["rule_id"], f["bp"], f["kind"]) for f in fees] == [
        ("fee-000002", 500, "channel_fee"), ("fee-000002.v2", 600, "channel_fee")]
    assert "(platform-wide)" in cli("fees", "list")
    cli("fees", "end", "fee-000001", "--at", FUTURE)

    cli("activities", "add", "a-1", "--shop", SHOP, "--leader", LEADER)
    assert "joined activity a-1 at 2099-01-01" in cli("activities", "join", "a-1", PROMOTER,
                                                      "--at", FUTURE)
    assert cli.json("activities", "list") == [{
        "activity_id": "a-1", "shop_id": SHOP, "leader_id": LEADER, "name": "",
        "created_at_ms": pytest.approx(time.time() * 1000, abs=120_000),
        "members": [{"promoter_id": PROMOTER, "joined_at_ms": FUTURE_MS}]}]
    assert "p-1" in cli("activities", "list")

    assert "T+7 days" in cli("schedule", "set", "--channel", CHANNEL, "--participant",
                             "promoter", "--days", "7")
    assert "schedule replaced" in cli("schedule", "set", "--channel", CHANNEL,
                                      "--participant", "promoter", "--days", "8")
    cli("schedule", "set", "--channel", "*", "--participant", "*", "--monthly")
    listed = cli("schedule", "list")
    assert "monthly (1st)" in listed
    assert "T+8 days" in listed
    assert "the default" not in listed
    cli("schedule", "remove", "--channel", "*", "--participant", "*")
    assert "anything else: T+15 days" in cli("schedule", "list")
    assert cli.json("schedule", "list")[0]["delay_days"] == 8


@pytest.mark.parametrize(("argv", "status", "message"), [
    (["rates", "add", "--level", "shop_generic", "--shop", SHOP, "--rate", "12.345"], 2,
     "at most two decimals"),
    (["rates", "add", "--level", "shop_generic", "--shop", SHOP, "--rate", "-1"], 2,
     "cannot be negative"),
    (["rates", "add", "--level", "shop_generic", "--shop", "s-404", "--rate", "1"], 2,
     "no shop 's-404'"),
    (["rates", "add", "--level", "nope", "--shop", SHOP, "--rate", "1"], 2, "invalid choice"),
    (["rates", "add", "--level", "shop_generic", "--shop", SHOP, "--rate", "1", "--from",
      "soon"], 2, "neither an ISO 8601"),
    (["rates", "add", "--level", "shop_generic", "--shop", SHOP, "--rate", "1", "--from",
      "1700000000"], 2, "seconds given?"),
    (["rates", "add", "--level", "shop_generic", "--shop", SHOP, "--rate", "1", "--from",
      FUTURE, "--to", "2098-01-01"], 2, "at or before it starts"),
    (["rates", "end", "rr-404", "--at", "1999-12-31"], 2,
     "outside 2001-09-09 01:46:40.000Z .. 2286-11-20 17:46:40.000Z"),
    (["rates", "end", "rr-404"], 2, "no rate rule 'rr-404'"),
    (["rates", "edit", "rr-404", "--rate", "3"], 2, "no rate rule"),
    (["fees", "add", "--kind", "channel_fee", "--bp", "10001", "--channel", CHANNEL], 2,
     "integer from 0 to 10000"),
    (["fees", "add", "--kind", "channel_fee", "--bp", "1", "--rate", "1"], 2,
     "not allowed with"),
    (["fees", "add", "--kind", "channel_fee", "--bp", "1"], 2, "channel_id"),
    (["schedule", "set", "--channel", "*", "--participant", "merchant", "--days", "3"], 2,
     "participant_kind"),
    (["schedule", "set", "--channel", "*", "--participant", "*", "--days", "3", "--monthly"],
     2, "not allowed with"),
    (["schedule", "set", "--channel", "*", "--participant", "*", "--days", "-3"], 2,
     "whole number"),
    (["schedule", "remove", "--channel", CHANNEL, "--participant", "*"], 2, "no schedule"),
    (["activities", "join", "a-404", PROMOTER], 2, "no activity 'a-404'"),
    (["rates"], 2, "required"),
])
def test_cli_bad_input(cli: Cli, argv: list[str], status: int, message: str) -> None:
    assert message in cli(*argv, status=status)


def test_cli_end_in_the_past_is_refused(cli: Cli) -> None:
    cli("rates", "add", "--level", "shop_generic", "--shop", SHOP, "--rate", "1", "--from",
        "2024-01-01")
    assert "is in the past" in cli("rates", "end", "rr-000001", "--at", "2024-06-01", status=2)
    assert "is in the past" in cli("rates", "edit", "rr-000001", "--rate", "2", "--from",
                                   "2024-06-01", status=2)
    assert cli.json("rates", "list")[0]["valid_to_ms"] is None


def test_cli_bad_database_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--database-url", "mysql://x/y", "rates", "list"]) == 2
    assert "unsupported database" in capsys.readouterr().err


def test_mounted_under_another_parser_the_parents_database_url_counts(
        cli: Cli, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="cps-billing")
    parser.add_argument("--database-url", default=None)
    add_config_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["--database-url", cli.url, "schedule", "list", "--json"])
    assert args.handler(args) == 0
    assert orjson.loads(capsys.readouterr().out) == []
    args = parser.parse_args(["schedule", "list", "--database-url", cli.url])
    assert args.database_url == cli.url
    assert args.handler(args) == 0


def test_parse_time() -> None:
    assert parse_time("2024-06-01") == 1_717_200_000_000
    assert parse_time("2024-06-01T08:00:00+08:00") == 1_717_200_000_000
    assert parse_time("2024-06-01T00:00:00.001") == 1_717_200_000_001
    assert parse_time("1717200000000") == 1_717_200_000_000
    assert format_ms(1_717_200_000_001) == "2024-06-01 00:00:00.001Z"
