"""Rate, channel-rate and fee books (billing_batch.rates): every level, edge and tie-break.

The hypothesis tests hold ``RateBook.lookup`` against ``reference_lookup``, a
plain scan over every rule that restates SPEC 8 and the module's documented
choices, on small id domains so that levels, versions and ties collide often.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from billing_batch.rates import (
    LEVEL_PRIORITY,
    ChannelRate,
    ChannelRateBook,
    ChannelRateChoice,
    FeeBook,
    FeeKind,
    Fees,
    FeeSetting,
    LineKey,
    RateBook,
    RateChoice,
    RateLevel,
    RateRule,
)

L = RateLevel
T = 1_772_366_400_000  # 2026-03-01T12:00:00.000Z
SHOP = "s1"


def rule(rule_id: str, level: RateLevel | str, rate_bp: int = 1000, *, shop_id: str = SHOP,
         valid_from_ms: int = 0, valid_to_ms: int | None = None, created_at_ms: int = 0,
         **scope: Any) -> RateRule:
    return RateRule(rule_id, level, shop_id, rate_bp,  # type: ignore[arg-type]
                    valid_from_ms, valid_to_ms, created_at_ms, **scope)


def key(*, shop_id: str = SHOP, product_id: str = "pr1", category_id: str | None = "c1",
        promoter_id: str | None = "p1", base_ids: frozenset[str] = frozenset({"b1"}),
        activity_ids: frozenset[str] = frozenset({"a1"}), paid_at_ms: int = T) -> LineKey:
    return LineKey(shop_id, product_id, category_id, promoter_id, base_ids, activity_ids,
                   paid_at_ms)


# One rule per level, each matching ``key()``, rate = 100 * (6 - priority index).
ALL_LEVELS = (
    rule("r-tp", L.TARGETED_PRODUCT, 600, product_id="pr1", promoter_id="p1"),
    rule("r-tb", L.TARGETED_BASE, 500, base_id="b1", product_id="pr1"),
    rule("r-gl", L.GROUP_LEADER, 400, product_id="pr1", activity_id="a1", leader_id="lead",
         leader_rate_bp=150),
    rule("r-gp", L.GENERIC_PRODUCT, 300, product_id="pr1"),
    rule("r-sc", L.SHOP_CATEGORY, 200, category_id="c1"),
    rule("r-sg", L.SHOP_GENERIC, 100),
)


def test_level_priority_is_spec_8() -> None:
    assert LEVEL_PRIORITY == (L.TARGETED_PRODUCT, L.TARGETED_BASE, L.GROUP_LEADER,
                              L.GENERIC_PRODUCT, L.SHOP_CATEGORY, L.SHOP_GENERIC)
    assert set(LEVEL_PRIORITY) == set(RateLevel)
    assert [str(level) for level in LEVEL_PRIORITY] == [
        "targeted_product", "targeted_base", "group_leader", "generic_product",
        "shop_category", "shop_generic"]


# ---------------------------------------------------------------- RateRule validation


@pytest.mark.parametrize(("level", "scope", "field", "problem"), [
    (L.TARGETED_PRODUCT, {"product_id": "pr1"}, "promoter_id", "required"),
    (L.TARGETED_PRODUCT, {"promoter_id": "p1"}, "product_id", "required"),
    (L.TARGETED_PRODUCT, {"product_id": "pr1", "promoter_id": "p1", "base_id": "b1"},
     "base_id", "must be None"),
    (L.TARGETED_BASE, {"product_id": "pr1"}, "base_id", "required"),
    (L.TARGETED_BASE, {"base_id": "b1", "promoter_id": "p1"}, "promoter_id", "must be None"),
    (L.TARGETED_BASE, {"base_id": "b1", "category_id": "c1"}, "category_id", "must be None"),
    (L.GROUP_LEADER, {"product_id": "pr1", "activity_id": "a1", "leader_id": "x"},
     "leader_rate_bp", "required"),
    (L.GROUP_LEADER, {"product_id": "pr1", "activity_id": "a1", "leader_rate_bp": 10},
     "leader_id", "required"),
    (L.GROUP_LEADER, {"product_id": "pr1", "leader_id": "x", "leader_rate_bp": 10},
     "activity_id", "required"),
    (L.GROUP_LEADER, {"activity_id": "a1", "leader_id": "x", "leader_rate_bp": 10},
     "product_id", "required"),
    (L.GENERIC_PRODUCT, {}, "product_id", "required"),
    (L.GENERIC_PRODUCT, {"product_id": "pr1", "leader_rate_bp": 5}, "leader_rate_bp",
     "must be None"),
    (L.GENERIC_PRODUCT, {"product_id": "pr1", "activity_id": "a1"}, "activity_id",
     "must be None"),
    (L.SHOP_CATEGORY, {}, "category_id", "required"),
    (L.SHOP_CATEGORY, {"category_id": "c1", "product_id": "pr1"}, "product_id", "must be None"),
    (L.SHOP_GENERIC, {"product_id": "pr1"}, "product_id", "must be None"),
    (L.SHOP_GENERIC, {"leader_id": "x"}, "leader_id", "must be None"),
    (L.SHOP_GENERIC, {"category_id": "c1"}, "category_id", "must be None"),
    (L.GENERIC_PRODUCT, {"product_id": ""}, "product_id", "non-empty id"),
    (L.GENERIC_PRODUCT, {"product_id": 7}, "product_id", "non-empty id"),
    (L.GROUP_LEADER, {"product_id": "pr1", "activity_id": "a1", "leader_id": "x",
                      "leader_rate_bp": 10001}, "leader_rate_bp", "basis points"),
    (L.GROUP_LEADER, {"product_id": "pr1", "activity_id": "a1", "leader_id": "x",
                      "leader_rate_bp": 9001}, "leader_rate_bp", "exceeds 10000"),
])
def test_rate_rule_names_the_field(level: RateLevel, scope: dict[str, Any], field: str,
                                   problem: str) -> None:
    with pytest.raises(ValueError, match=rf"^rate_rule r1\.{field}: .*{problem}"):
        rule("r1", level, **scope)


@pytest.mark.parametrize(("changes", "field"), [
    ({"rate_bp": -1}, "rate_bp"), ({"rate_bp": 10001}, "rate_bp"), ({"rate_bp": 12.5}, "rate_bp"),
    ({"rate_bp": True}, "rate_bp"), ({"valid_from_ms": -1}, "valid_from_ms"),
    ({"valid_to_ms": 100, "valid_from_ms": 100}, "valid_to_ms"),
    ({"valid_to_ms": 99, "valid_from_ms": 100}, "valid_to_ms"),
    ({"created_at_ms": None}, "created_at_ms"), ({"shop_id": ""}, "shop_id"),
    ({"level": "targeted"}, "level"),
])
def test_rate_rule_fields(changes: dict[str, Any], field: str) -> None:
    base: dict[str, Any] = {"rule_id": "r1", "level": L.SHOP_GENERIC, "shop_id": SHOP,
                            "rate_bp": 100,
                            "valid_from_ms": 0, "valid_to_ms": None, "created_at_ms": 0}
    with pytest.raises(ValueError, match=rf"^rate_rule r1\.{field}: "):
        RateRule(**(base | changes))
    with pytest.raises(ValueError, match=r"^rate_rule\.rule_id: "):
        RateRule(**(base | {"rule_id": ""}))


def test_rate_rule_accepts_edges_and_level_text() -> None:
    r = rule("r1", "group_leader", 9000, product_id="pr1", activity_id="a1", leader_id="x",
             leader_rate_bp=1000, valid_from_ms=5, valid_to_ms=6)
    assert r.level is L.GROUP_LEADER
    assert rule("r2", L.SHOP_GENERIC, 0).rate_bp == 0
    assert rule("r3", L.SHOP_GENERIC, 10000).rate_bp == 10000
    assert rule("r4", L.TARGETED_BASE, base_id="b1").product_id is None
    r.validate()


# ---------------------------------------------------------------- levels and priority


def test_every_level_in_priority_order() -> None:
    """Dropping the winning level each time walks down LEVEL_PRIORITY."""
    rules = list(ALL_LEVELS)
    for level in LEVEL_PRIORITY:
        choice = RateBook(rules).lookup(key())
        assert choice is not None
        assert choice.level is level
        assert choice.rule_id == rules[0].rule_id
        assert choice.rate_bp == rules[0].rate_bp
        rules.pop(0)
    assert RateBook(rules).lookup(key()) is None


@pytest.mark.parametrize(("changes", "level"), [
    ({}, L.TARGETED_PRODUCT),
    ({"promoter_id": "p2"}, L.TARGETED_BASE),  # another promoter, still in base b1
    ({"promoter_id": "p2", "base_ids": frozenset()}, L.GROUP_LEADER),
    ({"promoter_id": "p2", "base_ids": frozenset({"b2"})}, L.GROUP_LEADER),
    ({"promoter_id": "p2", "base_ids": frozenset(), "activity_ids": frozenset({"a2"})},
     L.GENERIC_PRODUCT),
    ({"promoter_id": None, "base_ids": frozenset(), "activity_ids": frozenset()},
     L.GENERIC_PRODUCT),
    ({"product_id": "pr2"}, L.SHOP_CATEGORY),  # every product rule is for pr1
    ({"product_id": "pr2", "category_id": "c2"}, L.SHOP_GENERIC),
    ({"product_id": "pr2", "category_id": None}, L.SHOP_GENERIC),
    ({"shop_id": "s2"}, None),
])
def test_what_each_level_matches(changes: dict[str, Any], level: RateLevel | None) -> None:
    choice = RateBook(ALL_LEVELS).lookup(replace(key(), **changes))
    assert (None if choice is None else choice.level) == level


def test_targeted_product_needs_the_promoter_and_product() -> None:
    book = RateBook([rule("r1", L.TARGETED_PRODUCT, product_id="pr1", promoter_id="p1")])
    assert book.lookup(key()) is not None
    assert book.lookup(key(promoter_id="p2")) is None
    assert book.lookup(key(product_id="pr2")) is None
    assert book.lookup(key(shop_id="s2")) is None
    assert book.lookup(key(promoter_id=None, base_ids=frozenset(),
                           activity_ids=frozenset())) is None


def test_group_leader_choice_carries_both_rates() -> None:
    book = RateBook([rule("r-gl", L.GROUP_LEADER, 1500, product_id="pr1", activity_id="a1",
                          leader_id="lead", leader_rate_bp=300)])
    assert book.lookup(key()) == RateChoice("r-gl", L.GROUP_LEADER, 1500, "a1", "lead", 300)
    assert book.lookup(key(activity_ids=frozenset({"a2"}))) is None
    assert book.lookup(key(product_id="pr2")) is None


def test_other_levels_carry_no_leader() -> None:
    for r in ALL_LEVELS:
        if r.level is L.GROUP_LEADER:
            continue
        choice = RateBook([r]).lookup(key())
        assert choice == RateChoice(r.rule_id, r.level, r.rate_bp)
        assert (choice.activity_id, choice.leader_id, choice.leader_rate_bp) == (None,) * 3


def test_group_leader_of_several_activities_created_last_wins() -> None:
    rules = [rule("r-a1", L.GROUP_LEADER, 100, product_id="pr1", activity_id="a1",
                  leader_id="l1", leader_rate_bp=10, created_at_ms=5),
             rule("r-a2", L.GROUP_LEADER, 200, product_id="pr1", activity_id="a2",
                  leader_id="l2", leader_rate_bp=20, created_at_ms=6)]
    both = key(activity_ids=frozenset({"a1", "a2"}))
    choice = RateBook(rules).lookup(both)
    assert choice is not None
    assert (choice.rule_id, choice.activity_id, choice.leader_id) == ("r-a2", "a2", "l2")
    expired = replace(rules[1], valid_to_ms=T)
    choice = RateBook([rules[0], expired]).lookup(both)
    assert choice is not None
    assert choice.rule_id == "r-a1"


# ---------------------------------------------------------------- targeted base


BASE_RULES = (
    rule("r-b1-shop", L.TARGETED_BASE, 100, base_id="b1", created_at_ms=9),
    rule("r-b1-pr1", L.TARGETED_BASE, 200, base_id="b1", product_id="pr1", created_at_ms=1),
    rule("r-b2-shop", L.TARGETED_BASE, 300, base_id="b2", created_at_ms=8),
    rule("r-b2-pr1", L.TARGETED_BASE, 400, base_id="b2", product_id="pr1", created_at_ms=2),
    rule("r-b3-pr2", L.TARGETED_BASE, 500, base_id="b3", product_id="pr2", created_at_ms=3),
)


@pytest.mark.parametrize(("bases", "product", "rule_id"), [
    ({"b1"}, "pr1", "r-b1-pr1"),  # product-specific beats the newer whole-shop rule
    ({"b1"}, "pr2", "r-b1-shop"),  # no product rule of b1 for pr2: the whole shop
    ({"b2"}, "pr1", "r-b2-pr1"),
    ({"b1", "b2"}, "pr1", "r-b2-pr1"),  # two product rules: created last
    ({"b1", "b2"}, "pr3", "r-b1-shop"),  # two whole-shop rules: created last
    ({"b1", "b3"}, "pr2", "r-b3-pr2"),  # b3's product rule beats b1's whole-shop rule
    ({"b3"}, "pr1", None),  # b3 has no rule for pr1 and no whole-shop rule
    ({"b9"}, "pr1", None),
    (set(), "pr1", None),
])
def test_targeted_base_product_before_whole_shop(bases: set[str], product: str,
                                                  rule_id: str | None) -> None:
    choice = RateBook(BASE_RULES).lookup(key(product_id=product, base_ids=frozenset(bases),
                                             activity_ids=frozenset()))
    assert (None if choice is None else choice.rule_id) == rule_id


def test_targeted_base_whole_shop_applies_when_the_product_rule_expired() -> None:
    rules = [replace(BASE_RULES[1], valid_to_ms=T), BASE_RULES[0]]
    choice = RateBook(rules).lookup(key())
    assert choice is not None
    assert choice.rule_id == "r-b1-shop"
    choice = RateBook(rules).lookup(key(paid_at_ms=T - 1))
    assert choice is not None
    assert choice.rule_id == "r-b1-pr1"


def test_many_bases_either_side_of_the_intersection() -> None:
    """The lookup iterates the smaller of the promoter's bases and the shop's."""
    rules = [rule(f"r{i:03d}", L.TARGETED_BASE, i, base_id=f"b{i}", created_at_ms=i)
             for i in range(50)]
    book = RateBook(rules)
    for bases in ({"b7"}, {"b7", "b3", "zz"}, {f"b{i}" for i in range(0, 200, 2)},
                  {f"x{i}" for i in range(500)} | {"b11"}):
        choice = book.lookup(key(product_id="pr9", base_ids=frozenset(bases)))
        best = max(int(b[1:]) for b in bases if b.startswith("b") and int(b[1:]) < 50)
        assert choice is not None
        assert choice.rule_id == f"r{best:03d}"


# ---------------------------------------------------------------- validity and ties


@pytest.mark.parametrize(("at_ms", "matches"), [
    (999, False), (1000, True), (1001, True), (1999, True), (2000, False), (2001, False)])
def test_validity_is_from_inclusive_to_exclusive(at_ms: int, matches: bool) -> None:
    for r in ALL_LEVELS:
        book = RateBook([replace(r, valid_from_ms=1000, valid_to_ms=2000)])
        assert (book.lookup(key(paid_at_ms=at_ms)) is not None) is matches, r.level


def test_open_ended_rule_and_back_to_back_versions() -> None:
    old = rule("r-old", L.GENERIC_PRODUCT, 100, product_id="pr1", valid_to_ms=T,
               created_at_ms=1)
    new = rule("r-new", L.GENERIC_PRODUCT, 200, product_id="pr1", valid_from_ms=T,
               created_at_ms=2)
    book = RateBook([new, old])
    assert [book.lookup(key(paid_at_ms=at)) for at in (0, T - 1, T, 2**62)] == [
        RateChoice("r-old", L.GENERIC_PRODUCT, 100), RateChoice("r-old", L.GENERIC_PRODUCT, 100),
        RateChoice("r-new", L.GENERIC_PRODUCT, 200), RateChoice("r-new", L.GENERIC_PRODUCT, 200)]


def test_an_expired_higher_level_falls_through() -> None:
    rules = [replace(ALL_LEVELS[0], valid_to_ms=T), *ALL_LEVELS[1:]]
    choice = RateBook(rules).lookup(key())
    assert choice is not None
    assert choice.level is L.TARGETED_BASE
    choice = RateBook(rules).lookup(key(paid_at_ms=T - 1))
    assert choice is not None
    assert choice.level is L.TARGETED_PRODUCT


@pytest.mark.parametrize("level_rule", ALL_LEVELS, ids=lambda r: str(r.level))
def test_ties_created_last_then_largest_rule_id(level_rule: RateRule) -> None:
    a = replace(level_rule, rule_id="r-a", rate_bp=1, created_at_ms=10)
    b = replace(level_rule, rule_id="r-b", rate_bp=2, created_at_ms=20)
    c = replace(level_rule, rule_id="r-c", rate_bp=3, created_at_ms=20)
    z = replace(level_rule, rule_id="r-z", rate_bp=4, created_at_ms=30, valid_from_ms=T + 1)

    def winner(*rules: RateRule) -> str | None:
        choice = RateBook(rules).lookup(key())
        return None if choice is None else choice.rule_id

    assert winner(a, b) == "r-b"  # created later
    assert winner(b, a) == "r-b"
    assert winner(a, b, c) == "r-c"  # same creation time: larger rule id
    assert winner(c, b, a) == "r-c"
    assert winner(a, z) == "r-a"  # the newest is not valid yet
    assert winner(replace(a, rule_id="r-9"), replace(a, rule_id="r-10")) == "r-9"  # as strings


def test_duplicate_rule_ids_and_foreign_objects_are_refused() -> None:
    with pytest.raises(ValueError, match=r"rate_book\.rule_id: 'r-tp' appears twice"):
        RateBook([ALL_LEVELS[0], replace(ALL_LEVELS[1], rule_id="r-tp")])
    with pytest.raises(ValueError, match="expected RateRule"):
        RateBook([object()])  # type: ignore[list-item]
    assert len(RateBook(ALL_LEVELS)) == 6
    assert RateBook([]).lookup(key()) is None


# ---------------------------------------------------------------- LineKey


@pytest.mark.parametrize(("changes", "field"), [
    ({"shop_id": ""}, "shop_id"), ({"product_id": None}, "product_id"),
    ({"category_id": ""}, "category_id"), ({"promoter_id": 5}, "promoter_id"),
    ({"base_ids": {"b1"}}, "base_ids"), ({"activity_ids": ("a1",)}, "activity_ids"),
    ({"promoter_id": None}, "base_ids"), ({"paid_at_ms": -1}, "paid_at_ms"),
    ({"paid_at_ms": 1.5}, "paid_at_ms"),
])
def test_line_key_names_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=rf"^line_key\.{field}: "):
        replace(key(), **changes)


# ---------------------------------------------------------------- against a plain scan


def _matches(r: RateRule, k: LineKey) -> bool:
    if r.shop_id != k.shop_id or not r.valid_from_ms <= k.paid_at_ms < (
            r.valid_to_ms if r.valid_to_ms is not None else 2**63):
        return False
    if r.level is L.TARGETED_PRODUCT:
        return r.product_id == k.product_id and r.promoter_id == k.promoter_id
    if r.level is L.TARGETED_BASE:
        return (k.promoter_id is not None and r.base_id in k.base_ids
                and r.product_id in (None, k.product_id))
    if r.level is L.GROUP_LEADER:
        return (k.promoter_id is not None and r.product_id == k.product_id
                and r.activity_id in k.activity_ids)
    if r.level is L.GENERIC_PRODUCT:
        return r.product_id == k.product_id
    if r.level is L.SHOP_CATEGORY:
        return k.category_id is not None and r.category_id == k.category_id
    return True


def reference_lookup(rules: list[RateRule], k: LineKey) -> str | None:
    """SPEC 8 by brute force: first level with a match, the product-specific base rules
    before whole-shop ones, then created last, then the largest rule id."""
    for level in LEVEL_PRIORITY:
        found = [r for r in rules if r.level is level and _matches(r, k)]
        if level is L.TARGETED_BASE and any(r.product_id is not None for r in found):
            found = [r for r in found if r.product_id is not None]
        if found:
            return max(found, key=lambda r: (r.created_at_ms, r.rule_id)).rule_id
    return None


_ids = st.sampled_from
_times = st.integers(min_value=0, max_value=6)


@st.composite
def rate_rules(draw: st.DrawFn) -> list[RateRule]:
    count = draw(st.integers(min_value=0, max_value=25))
    rules = []
    for n in range(count):
        level = draw(st.sampled_from(list(RateLevel)))
        start = draw(_times)
        end = draw(st.none() | st.integers(min_value=start + 1, max_value=8))
        scope: dict[str, Any] = {}
        if level in (L.TARGETED_PRODUCT, L.GROUP_LEADER, L.GENERIC_PRODUCT):
            scope["product_id"] = draw(_ids(["pr1", "pr2"]))
        if level is L.TARGETED_BASE:
            scope["product_id"] = draw(st.none() | _ids(["pr1", "pr2"]))
            scope["base_id"] = draw(_ids(["b1", "b2", "b3"]))
        if level is L.TARGETED_PRODUCT:
            scope["promoter_id"] = draw(_ids(["p1", "p2"]))
        if level is L.GROUP_LEADER:
            scope |= {"activity_id": draw(_ids(["a1", "a2", "a3"])), "leader_id": "lead",
                      "leader_rate_bp": draw(st.integers(min_value=0, max_value=100))}
        if level is L.SHOP_CATEGORY:
            scope["category_id"] = draw(_ids(["c1", "c2"]))
        rules.append(rule(draw(_ids(["r1", "r2", "r3"])) + f"-{n}", level,
                          draw(st.integers(min_value=0, max_value=9900)),
                          shop_id=draw(_ids(["s1", "s1", "s2"])), valid_from_ms=start,
                          valid_to_ms=end, created_at_ms=draw(st.integers(0, 3)), **scope))
    return rules


line_keys = st.builds(
    lambda shop, product, category, promoter, bases, activities, at: LineKey(
        shop, product, category, promoter, frozenset(bases) if promoter else frozenset(),
        frozenset(activities) if promoter else frozenset(), at),
    _ids(["s1", "s2", "s3"]), _ids(["pr1", "pr2", "pr3"]), st.none() | _ids(["c1", "c2"]),
    st.none() | _ids(["p1", "p2"]), st.sets(_ids(["b1", "b2", "b3", "b4"])),
    st.sets(_ids(["a1", "a2", "a3", "a4"])), st.integers(min_value=0, max_value=9))


@settings(max_examples=200)
@given(rate_rules(), st.lists(line_keys, min_size=1, max_size=8), st.randoms())
def test_lookup_equals_the_reference_scan(rules: list[RateRule], keys: list[LineKey],
                                          rnd: random.Random) -> None:
    book = RateBook(rules)
    shuffled = list(rules)
    rnd.shuffle(shuffled)
    again = RateBook(shuffled)  # the order rules come in never matters
    by_id = {r.rule_id: r for r in rules}
    for k in keys:
        expected = reference_lookup(rules, k)
        choice = book.lookup(k)
        event(f"level {None if choice is None else choice.level}")
        assert (None if choice is None else choice.rule_id) == expected
        assert again.lookup(k) == choice
        if choice is not None:
            r = by_id[choice.rule_id]
            assert (choice.level, choice.rate_bp, choice.leader_rate_bp) == (
                r.level, r.rate_bp, r.leader_rate_bp)


def test_a_large_book_answers_every_line() -> None:
    """The batch's shape: 200 shops, 25,200 rules, all levels (its speed is measured by
    ``bench.billing``, not here)."""
    rnd = random.Random(8)
    rules: list[RateRule] = []
    for s in range(200):
        shop = f"s{s}"
        rules.append(rule(f"{shop}-g", L.SHOP_GENERIC, 500, shop_id=shop))
        rules += [rule(f"{shop}-c{c}", L.SHOP_CATEGORY, 600, shop_id=shop, category_id=f"c{c}")
                  for c in range(10)]
        for p in range(50):
            rules.append(rule(f"{shop}-p{p}-old", L.GENERIC_PRODUCT, 700, shop_id=shop,
                              product_id=f"pr{p}", valid_to_ms=1000, created_at_ms=1))
            rules.append(rule(f"{shop}-p{p}-new", L.GENERIC_PRODUCT, 800, shop_id=shop,
                              product_id=f"pr{p}", valid_from_ms=1000, created_at_ms=2))
        rules += [rule(f"{shop}-b{b}", L.TARGETED_BASE, 900, shop_id=shop, base_id=f"b{b}")
                  for b in range(5)]
        for p in range(5):
            rules.append(rule(f"{shop}-t{p}", L.TARGETED_PRODUCT, 1000, shop_id=shop,
                              product_id=f"pr{p}", promoter_id="p1"))
            rules.append(rule(f"{shop}-l{p}", L.GROUP_LEADER, 1100, shop_id=shop,
                              product_id=f"pr{p}", activity_id="a1", leader_id="lead",
                              leader_rate_bp=100))
    book = RateBook(rules)
    assert len(book) == 25_200
    keys = [LineKey(f"s{rnd.randrange(200)}", f"pr{rnd.randrange(100)}",
                    f"c{rnd.randrange(12)}", f"p{rnd.randrange(3)}",
                    frozenset({"b9", "b2"}) if rnd.random() < 0.3 else frozenset(),
                    frozenset({"a1"}) if rnd.random() < 0.3 else frozenset(),
                    rnd.randrange(2000)) for _ in range(5_000)]
    assert all(book.lookup(key) is not None for key in keys)  # every shop has a generic rule


# ---------------------------------------------------------------- channel rates


def channel_rate(rule_id: str, category_id: str | None, rate_bp: int, *, channel_id: str = "ch1",
                 valid_from_ms: int = 0, valid_to_ms: int | None = None,
                 created_at_ms: int = 0) -> ChannelRate:
    return ChannelRate(rule_id, channel_id, category_id, rate_bp, valid_from_ms, valid_to_ms,
                       created_at_ms)


CHANNEL_RATES = (
    channel_rate("cr-wide", None, 300),
    channel_rate("cr-c1", "c1", 500, valid_from_ms=1000, valid_to_ms=2000),
    channel_rate("cr-c2", "c2", 700),
    channel_rate("cr-other", None, 900, channel_id="ch2"),
)


@pytest.mark.parametrize(("channel", "category", "at_ms", "expected"), [
    ("ch1", "c1", 1000, ChannelRateChoice("cr-c1", 500, "c1")),
    ("ch1", "c1", 1999, ChannelRateChoice("cr-c1", 500, "c1")),
    ("ch1", "c1", 999, ChannelRateChoice("cr-wide", 300, None)),  # category rule not yet valid
    ("ch1", "c1", 2000, ChannelRateChoice("cr-wide", 300, None)),  # expired
    ("ch1", "c2", 5, ChannelRateChoice("cr-c2", 700, "c2")),
    ("ch1", "c3", 5, ChannelRateChoice("cr-wide", 300, None)),  # no category rule
    ("ch1", None, 1500, ChannelRateChoice("cr-wide", 300, None)),
    ("ch2", "c1", 1500, ChannelRateChoice("cr-other", 900, None)),
    ("ch3", "c1", 1500, None),
])
def test_channel_rate_per_category_else_channel_wide(channel: str, category: str | None,
                                                     at_ms: int,
                                                     expected: ChannelRateChoice | None) -> None:
    assert ChannelRateBook(CHANNEL_RATES).lookup(channel, category, at_ms) == expected


def test_channel_rate_without_channel_wide_rule_and_ties() -> None:
    book = ChannelRateBook([channel_rate("cr-c1", "c1", 500, valid_to_ms=10)])
    assert book.lookup("ch1", "c1", 10) is None
    book = ChannelRateBook([channel_rate("cr-a", "c1", 1, created_at_ms=5),
                            channel_rate("cr-c", "c1", 3, created_at_ms=5),
                            channel_rate("cr-b", "c1", 2, created_at_ms=4),
                            channel_rate("cr-w1", None, 4, created_at_ms=9),
                            channel_rate("cr-w2", None, 5, created_at_ms=8)])
    assert book.lookup("ch1", "c1", 0) == ChannelRateChoice("cr-c", 3, "c1")
    assert book.lookup("ch1", "c9", 0) == ChannelRateChoice("cr-w1", 4, None)


def test_channel_rate_validation() -> None:
    for changes, field in (({"rule_id": ""}, None), ({"channel_id": None}, "channel_id"),
                           ({"category_id": ""}, "category_id"), ({"rate_bp": 10001}, "rate_bp"),
                           ({"valid_to_ms": 0}, "valid_to_ms"),
                           ({"created_at_ms": -5}, "created_at_ms")):
        pattern = r"^channel_rate\.rule_id: " if field is None else rf"^channel_rate cr1\.{field}"
        with pytest.raises(ValueError, match=pattern):
            replace(channel_rate("cr1", None, 100), **changes)
    with pytest.raises(ValueError, match="appears twice"):
        ChannelRateBook([channel_rate("cr1", None, 1), channel_rate("cr1", "c1", 2)])
    with pytest.raises(ValueError, match="expected ChannelRate"):
        ChannelRateBook(ALL_LEVELS)  # type: ignore[arg-type]


# ---------------------------------------------------------------- fee settings


def fee(rule_id: str, kind: FeeKind | str, channel_id: str | None, bp: int, *,
        valid_from_ms: int = 0, valid_to_ms: int | None = None,
        created_at_ms: int = 0) -> FeeSetting:
    return FeeSetting(rule_id, kind, channel_id, bp, valid_from_ms,  # type: ignore[arg-type]
                      valid_to_ms, created_at_ms)


FEES = (
    fee("f-plat", FeeKind.PLATFORM_SHARE, None, 1000),
    fee("f-plat-ch2", FeeKind.PLATFORM_SHARE, "ch2", 800, valid_from_ms=100, valid_to_ms=200),
    fee("f-chan-ch1", FeeKind.CHANNEL_FEE, "ch1", 500),
    fee("f-fans-ch1", FeeKind.FANS_SHARE, "ch1", 250, valid_to_ms=100),
    fee("f-chan-ch2", "channel_fee", "ch2", 2000),
)


@pytest.mark.parametrize(("channel", "at_ms", "expected"), [
    ("ch1", 0, Fees(1000, 500, 250, "f-plat", "f-chan-ch1", "f-fans-ch1")),
    ("ch1", 99, Fees(1000, 500, 250, "f-plat", "f-chan-ch1", "f-fans-ch1")),
    ("ch1", 100, Fees(1000, 500, 0, "f-plat", "f-chan-ch1", None)),  # fans share expired
    ("ch2", 99, Fees(1000, 2000, 0, "f-plat", "f-chan-ch2", None)),
    ("ch2", 100, Fees(800, 2000, 0, "f-plat-ch2", "f-chan-ch2", None)),  # channel override
    ("ch2", 199, Fees(800, 2000, 0, "f-plat-ch2", "f-chan-ch2", None)),
    ("ch2", 200, Fees(1000, 2000, 0, "f-plat", "f-chan-ch2", None)),
    ("ch3", 0, Fees(1000, 0, 0, "f-plat", None, None)),  # missing settings: 0
    (None, 0, Fees(1000, 0, 0, "f-plat", None, None)),
])
def test_fee_lookup(channel: str | None, at_ms: int, expected: Fees) -> None:
    assert FeeBook(FEES).lookup(channel, at_ms) == expected


def test_no_fee_settings_is_all_zero_and_ties() -> None:
    assert FeeBook([]).lookup("ch1", 0) == Fees()
    assert Fees() == Fees(0, 0, 0, None, None, None)
    book = FeeBook([fee("f-1", FeeKind.CHANNEL_FEE, "ch1", 100, created_at_ms=1),
                    fee("f-3", FeeKind.CHANNEL_FEE, "ch1", 300, created_at_ms=1),
                    fee("f-2", FeeKind.CHANNEL_FEE, "ch1", 200, created_at_ms=0)])
    assert book.lookup("ch1", 0).channel_fee_rule_id == "f-3"


def test_fee_setting_validation() -> None:
    with pytest.raises(ValueError, match=r"^fee_setting f1\.channel_id: "):
        fee("f1", FeeKind.CHANNEL_FEE, None, 100)
    with pytest.raises(ValueError, match=r"^fee_setting f1\.channel_id: "):
        fee("f1", FeeKind.FANS_SHARE, None, 100)
    with pytest.raises(ValueError, match=r"^fee_setting f1\.kind: must be one of"):
        fee("f1", "platform", None, 100)
    with pytest.raises(ValueError, match=r"^fee_setting f1\.bp: "):
        fee("f1", FeeKind.PLATFORM_SHARE, None, -1)
    with pytest.raises(ValueError, match=r"^fee_setting f1\.valid_to_ms: "):
        fee("f1", FeeKind.PLATFORM_SHARE, None, 1, valid_from_ms=5, valid_to_ms=5)
    assert fee("f1", "fans_share", "ch1", 1).kind is FeeKind.FANS_SHARE
    with pytest.raises(ValueError, match="appears twice"):
        FeeBook([FEES[0], replace(FEES[1], rule_id="f-plat")])
