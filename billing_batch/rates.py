"""Commission rates, channel rates and fee settings, looked up at payment (SPEC 8, 9).

Pure: rules in, choices out; the batch reads the rules from the database,
builds each book once per run and looks every paid line up in memory.

**CPS rates** (``RateBook``).  An item's rate comes from the highest-priority
level with a rule valid at the payment time (``LEVEL_PRIORITY``):

    targeted_product > targeted_base > group_leader > generic_product > shop_category > shop_generic

| level | a rule names | it matches a line of the same shop when |
|---|---|---|
| targeted_product | product, promoter | same product and promoter |
| targeted_base | base, product or None | the promoter is in the base; same product, or None = any |
| group_leader | product, activity, leader, leader rate | same product; promoter joined activity |
| generic_product | product | same product |
| shop_category | category | the item's category |
| shop_generic | - | always |

A rule is valid over ``[valid_from_ms, valid_to_ms)`` (``None`` = open
ended): paid at ``valid_to_ms - 1`` it matches, at ``valid_to_ms`` it does
not, so a rate replaced at T by a rule starting at T never overlaps.

Several rules matching on one level (overlapping versions, or several of the
promoter's bases or activities): the rule **created last** (largest
``created_at_ms``) wins, equal creation times by the **largest ``rule_id``**
(compared as strings: "r9" > "r10"; the database should hand out ids that
sort, e.g. zero-padded).  One refinement on the targeted-base level: a rule
for the line's **product beats a whole-shop rule** of any of the promoter's
bases, whatever their creation times (the more specific rule is the
merchant's intent for that product); only if no product rule of any of the
promoter's bases is valid does a whole-shop base rule apply.

Group-leader rules carry two rates: ``rate_bp`` (the promoter's rate, the
product pool) and ``leader_rate_bp`` (the group-leader pool, SPEC 9); the
choice carries both, with the activity and the leader.  Together they may
not exceed 100 % of the paid amount.

**Channel rates** (``ChannelRateBook``, self-operated lines): the channel's
rule for the item's category, else its channel-wide rule (``category_id``
None), each valid ``[from, to)``, ties as above.

**Fee settings** (``FeeBook``): ``platform_share`` (the platform's share of
each pool; a platform-wide setting with ``channel_id`` None, which a setting
for a channel overrides on that channel), ``channel_fee`` (a channel's fee
on the *paid* amount) and ``fans_share`` (a channel's fans account's share of
the product pool); validity and ties as above; a missing setting is 0 bp.

Speed: the books index rules by shop (channel) and level, then by product,
promoter, base, activity or category, each key holding its versions newest
first, so a lookup is a few dict gets and a short scan of one key's
versions: ~1.7 us a lookup over 25,200 rules of 200 shops (1,000,000 in
~2 s; ``test_a_million_lookups_take_seconds``); building the book takes
~0.1 s, a checked ``LineKey`` ~3 us.  The promoter's bases and activities
are intersected with the shop's from the smaller side.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

from billing_batch.money import BP_PER_UNIT, check_bp, check_id, check_int, coerce_enum

_FOREVER = 1 << 63  # valid_to_ms None: open ended (ms far beyond any clock)
_C = TypeVar("_C")
_K = TypeVar("_K")
_R = TypeVar("_R", "RateRule", "ChannelRate", "FeeSetting")


class RateLevel(StrEnum):
    TARGETED_PRODUCT = "targeted_product"
    TARGETED_BASE = "targeted_base"
    GROUP_LEADER = "group_leader"
    GENERIC_PRODUCT = "generic_product"
    SHOP_CATEGORY = "shop_category"
    SHOP_GENERIC = "shop_generic"


LEVEL_PRIORITY: tuple[RateLevel, ...] = (
    RateLevel.TARGETED_PRODUCT, RateLevel.TARGETED_BASE, RateLevel.GROUP_LEADER,
    RateLevel.GENERIC_PRODUCT, RateLevel.SHOP_CATEGORY, RateLevel.SHOP_GENERIC)

_SCOPE_FIELDS = ("product_id", "promoter_id", "base_id", "activity_id", "leader_id",
                 "leader_rate_bp", "category_id")
# level -> (fields it requires, fields it may leave None); every other scope field must be None.
_LEVEL_FIELDS: Mapping[RateLevel, tuple[frozenset[str], frozenset[str]]] = {
    RateLevel.TARGETED_PRODUCT: (frozenset({"product_id", "promoter_id"}), frozenset()),
    RateLevel.TARGETED_BASE: (frozenset({"base_id"}), frozenset({"product_id"})),
    RateLevel.GROUP_LEADER: (frozenset({"product_id", "activity_id", "leader_id",
                                        "leader_rate_bp"}), frozenset()),
    RateLevel.GENERIC_PRODUCT: (frozenset({"product_id"}), frozenset()),
    RateLevel.SHOP_CATEGORY: (frozenset({"category_id"}), frozenset()),
    RateLevel.SHOP_GENERIC: (frozenset(), frozenset()),
}


def _check_validity(owner: str, valid_from_ms: object, valid_to_ms: object,
                    created_at_ms: object) -> None:
    check_int(owner, "valid_from_ms", valid_from_ms)
    low = valid_from_ms + 1 if isinstance(valid_from_ms, int) else 1
    check_int(owner, "valid_to_ms", valid_to_ms, low=low, optional=True)
    check_int(owner, "created_at_ms", created_at_ms)


# ---------------------------------------------------------------- versions of one key


@dataclass(frozen=True, slots=True)
class _Version(Generic[_C]):
    """One rule of a key: valid over [from, to), ranked by (created, rule id), with its choice."""

    valid_from_ms: int
    valid_to_ms: int
    rank: tuple[int, str]  # (created_at_ms, rule_id): larger wins
    choice: _C

    @property
    def rule_id(self) -> str:
        return self.rank[1]


def _version(rule_id: str, valid_from_ms: int, valid_to_ms: int | None, created_at_ms: int,
             choice: _C) -> _Version[_C]:
    return _Version(valid_from_ms, _FOREVER if valid_to_ms is None else valid_to_ms,
                    (created_at_ms, rule_id), choice)


def _newest_first(index: Mapping[_K, list[_Version[_C]]]) -> None:
    for versions in index.values():
        versions.sort(key=lambda v: v.rank, reverse=True)


def _valid(versions: Sequence[_Version[_C]] | None, at_ms: int) -> _Version[_C] | None:
    """The newest version valid at ``at_ms`` (versions are sorted newest first)."""
    if versions:
        for version in versions:
            if version.valid_from_ms <= at_ms < version.valid_to_ms:
                return version
    return None


def _best_of(by_id: Mapping[str, list[_Version[_C]]] | None, ids: frozenset[str],
             at_ms: int) -> _Version[_C] | None:
    """The newest valid version over the keys in both ``by_id`` and ``ids``."""
    if not by_id or not ids:
        return None
    if len(ids) <= len(by_id):
        keys = [key for key in ids if key in by_id]
    else:
        keys = [key for key in by_id if key in ids]
    best: _Version[_C] | None = None
    for key in keys:
        found = _valid(by_id[key], at_ms)
        if found is not None and (best is None or found.rank > best.rank):
            best = found
    return best


def _checked(owner: str, cls: type[_R], rules: Iterable[_R]) -> Iterator[_R]:
    """``rules``, each checked to be a ``cls`` with a rule id not seen before in the book."""
    seen: set[str] = set()
    for rule in rules:
        if not isinstance(rule, cls):
            raise ValueError(f"{owner}: expected {cls.__name__}, got {type(rule).__name__}")
        if rule.rule_id in seen:
            raise ValueError(f"{owner}.rule_id: {rule.rule_id!r} appears twice")
        seen.add(rule.rule_id)
        yield rule


# ---------------------------------------------------------------- CPS rates


@dataclass(frozen=True, slots=True)
class RateRule:
    """A merchant's commission rate at one level; which scope fields are set depends on it."""

    rule_id: str
    level: RateLevel
    shop_id: str
    rate_bp: int
    valid_from_ms: int
    valid_to_ms: int | None  # exclusive; None = open ended
    created_at_ms: int
    product_id: str | None = None  # targeted_product, group_leader, generic_product; targeted_base
    promoter_id: str | None = None  # targeted_product
    base_id: str | None = None  # targeted_base
    activity_id: str | None = None  # group_leader
    leader_id: str | None = None  # group_leader: the group leader's promoter id
    leader_rate_bp: int | None = None  # group_leader: the rate of the group-leader pool
    category_id: str | None = None  # shop_category

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """``ValueError`` naming the field that does not fit the rule's level."""
        owner = "rate_rule"
        check_id(owner, "rule_id", self.rule_id)
        owner = f"rate_rule {self.rule_id}"
        level = coerce_enum(owner, "level", RateLevel, self.level)
        object.__setattr__(self, "level", level)  # a level read as text becomes the enum
        check_id(owner, "shop_id", self.shop_id)
        check_bp(owner, "rate_bp", self.rate_bp)
        _check_validity(owner, self.valid_from_ms, self.valid_to_ms, self.created_at_ms)
        required, optional = _LEVEL_FIELDS[level]
        for name in _SCOPE_FIELDS:
            value = getattr(self, name)
            if value is None:
                if name in required:
                    raise ValueError(f"{owner}.{name}: required at level {level}")
            elif name not in required and name not in optional:
                raise ValueError(f"{owner}.{name}: must be None at level {level}")
            elif name == "leader_rate_bp":
                check_bp(owner, name, value)
            else:
                check_id(owner, name, value)
        if self.leader_rate_bp is not None and self.rate_bp + self.leader_rate_bp > BP_PER_UNIT:
            raise ValueError(f"{owner}.leader_rate_bp: rate_bp + leader_rate_bp "
                             f"({self.rate_bp} + {self.leader_rate_bp}) exceeds "
                             f"{BP_PER_UNIT} bp (100 % of the paid amount)")


@dataclass(frozen=True, slots=True)
class LineKey:
    """What a paid line is looked up by; ``base_ids``/``activity_ids`` are the promoter's."""

    shop_id: str
    product_id: str
    category_id: str | None
    promoter_id: str | None  # None: only generic product, shop category and shop generic match
    base_ids: frozenset[str] = frozenset()  # promoter bases the promoter belongs to
    activity_ids: frozenset[str] = frozenset()  # group-leader activities the promoter joined
    paid_at_ms: int = 0

    def __post_init__(self) -> None:
        check_id("line_key", "shop_id", self.shop_id)
        check_id("line_key", "product_id", self.product_id)
        check_id("line_key", "category_id", self.category_id, optional=True)
        check_id("line_key", "promoter_id", self.promoter_id, optional=True)
        for name in ("base_ids", "activity_ids"):
            value = getattr(self, name)
            if not isinstance(value, frozenset):
                raise ValueError(f"line_key.{name}: must be a frozenset of ids, got {value!r}")
            if value and self.promoter_id is None:
                raise ValueError(f"line_key.{name}: must be empty without a promoter_id")
        check_int("line_key", "paid_at_ms", self.paid_at_ms)


@dataclass(frozen=True, slots=True)
class RateChoice:
    """The rule that supplies a line's rate; the leader fields only at the group-leader level."""

    rule_id: str
    level: RateLevel
    rate_bp: int
    activity_id: str | None = None
    leader_id: str | None = None
    leader_rate_bp: int | None = None


def _choice(rule: RateRule) -> RateChoice:
    return RateChoice(rule.rule_id, rule.level, rule.rate_bp, rule.activity_id,
                      rule.leader_id, rule.leader_rate_bp)


_Versions = list[_Version[RateChoice]]


class _ShopRates:
    """One shop's rules, each level indexed by what it matches on."""

    __slots__ = ("base_product", "base_shop", "generic", "generic_product", "leader",
                 "shop_category", "targeted")

    def __init__(self) -> None:
        self.targeted: dict[tuple[str, str], _Versions] = {}  # (product, promoter)
        self.base_product: dict[str, dict[str, _Versions]] = {}  # product -> base ->
        self.base_shop: dict[str, _Versions] = {}  # base (whole shop)
        self.leader: dict[str, dict[str, _Versions]] = {}  # product -> activity ->
        self.generic_product: dict[str, _Versions] = {}  # product
        self.shop_category: dict[str, _Versions] = {}  # category
        self.generic: _Versions = []

    def add(self, rule: RateRule) -> None:
        version = _version(rule.rule_id, rule.valid_from_ms, rule.valid_to_ms,
                           rule.created_at_ms, _choice(rule))
        self._versions(rule).append(version)

    def _versions(self, rule: RateRule) -> _Versions:
        level = rule.level
        if level is RateLevel.TARGETED_PRODUCT:
            return self.targeted.setdefault((_s(rule.product_id), _s(rule.promoter_id)), [])
        if level is RateLevel.TARGETED_BASE:
            if rule.product_id is None:
                return self.base_shop.setdefault(_s(rule.base_id), [])
            by_base = self.base_product.setdefault(rule.product_id, {})
            return by_base.setdefault(_s(rule.base_id), [])
        if level is RateLevel.GROUP_LEADER:
            by_activity = self.leader.setdefault(_s(rule.product_id), {})
            return by_activity.setdefault(_s(rule.activity_id), [])
        if level is RateLevel.GENERIC_PRODUCT:
            return self.generic_product.setdefault(_s(rule.product_id), [])
        if level is RateLevel.SHOP_CATEGORY:
            return self.shop_category.setdefault(_s(rule.category_id), [])
        return self.generic

    def sort(self) -> None:
        _newest_first(self.targeted)
        for index in (self.base_shop, self.generic_product, self.shop_category,
                      *self.base_product.values(), *self.leader.values()):
            _newest_first(index)
        self.generic.sort(key=lambda v: v.rank, reverse=True)

    def lookup(self, key: LineKey) -> RateChoice | None:
        at_ms, product = key.paid_at_ms, key.product_id
        found: _Version[RateChoice] | None = None
        if key.promoter_id is not None:
            if self.targeted:
                found = _valid(self.targeted.get((product, key.promoter_id)), at_ms)
            if found is None and key.base_ids:
                found = (_best_of(self.base_product.get(product), key.base_ids, at_ms)
                         or _best_of(self.base_shop, key.base_ids, at_ms))
            if found is None and key.activity_ids:
                found = _best_of(self.leader.get(product), key.activity_ids, at_ms)
        if found is None and self.generic_product:
            found = _valid(self.generic_product.get(product), at_ms)
        if found is None and key.category_id is not None and self.shop_category:
            found = _valid(self.shop_category.get(key.category_id), at_ms)
        if found is None:
            found = _valid(self.generic, at_ms)
        return None if found is None else found.choice


def _s(value: str | None) -> str:
    assert value is not None  # RateRule.validate guarantees it per level
    return value


class RateBook:
    """Every CPS rate rule, indexed once; ``lookup`` answers a line in a few dict gets."""

    def __init__(self, rules: Iterable[RateRule]) -> None:
        self._shops: dict[str, _ShopRates] = {}
        count = 0
        for rule in _checked("rate_book", RateRule, rules):
            shop = self._shops.get(rule.shop_id)
            if shop is None:
                shop = self._shops[rule.shop_id] = _ShopRates()
            shop.add(rule)
            count += 1
        for shop in self._shops.values():
            shop.sort()
        self._count = count

    def __len__(self) -> int:
        return self._count

    def lookup(self, key: LineKey) -> RateChoice | None:
        """The rate of the highest-priority level with a rule valid at ``key.paid_at_ms``."""
        shop = self._shops.get(key.shop_id)
        return None if shop is None else shop.lookup(key)


# ---------------------------------------------------------------- channel rates (self-operated)


@dataclass(frozen=True, slots=True)
class ChannelRate:
    """A channel's rate for self-operated lines: per category, or channel-wide (None)."""

    rule_id: str
    channel_id: str
    category_id: str | None
    rate_bp: int
    valid_from_ms: int
    valid_to_ms: int | None
    created_at_ms: int

    def __post_init__(self) -> None:
        check_id("channel_rate", "rule_id", self.rule_id)
        owner = f"channel_rate {self.rule_id}"
        check_id(owner, "channel_id", self.channel_id)
        check_id(owner, "category_id", self.category_id, optional=True)
        check_bp(owner, "rate_bp", self.rate_bp)
        _check_validity(owner, self.valid_from_ms, self.valid_to_ms, self.created_at_ms)


@dataclass(frozen=True, slots=True)
class ChannelRateChoice:
    rule_id: str
    rate_bp: int
    category_id: str | None  # None: the channel-wide rate applied


class ChannelRateBook:
    """Channel rates by channel, then category (``None`` = channel-wide)."""

    def __init__(self, rates: Iterable[ChannelRate]) -> None:
        self._channels: dict[str, dict[str | None, list[_Version[ChannelRateChoice]]]] = {}
        for rate in _checked("channel_rate_book", ChannelRate, rates):
            by_category = self._channels.setdefault(rate.channel_id, {})
            by_category.setdefault(rate.category_id, []).append(_version(
                rate.rule_id, rate.valid_from_ms, rate.valid_to_ms, rate.created_at_ms,
                ChannelRateChoice(rate.rule_id, rate.rate_bp, rate.category_id)))
        for by_category in self._channels.values():
            _newest_first(by_category)

    def lookup(self, channel_id: str, category_id: str | None,
               at_ms: int) -> ChannelRateChoice | None:
        """The channel's rate for the category valid at ``at_ms``, else its channel-wide one."""
        by_category = self._channels.get(channel_id)
        if by_category is None:
            return None
        found = None if category_id is None else _valid(by_category.get(category_id), at_ms)
        if found is None:
            found = _valid(by_category.get(None), at_ms)
        return None if found is None else found.choice


# ---------------------------------------------------------------- fee settings


class FeeKind(StrEnum):
    PLATFORM_SHARE = "platform_share"  # share of each pool; platform-wide or per channel
    CHANNEL_FEE = "channel_fee"  # per channel, on the paid amount
    FANS_SHARE = "fans_share"  # per channel, share of the product pool


@dataclass(frozen=True, slots=True)
class FeeSetting:
    rule_id: str
    kind: FeeKind
    channel_id: str | None  # required for channel_fee and fans_share; platform_share: override
    bp: int
    valid_from_ms: int
    valid_to_ms: int | None
    created_at_ms: int

    def __post_init__(self) -> None:
        check_id("fee_setting", "rule_id", self.rule_id)
        owner = f"fee_setting {self.rule_id}"
        kind = coerce_enum(owner, "kind", FeeKind, self.kind)
        object.__setattr__(self, "kind", kind)
        check_id(owner, "channel_id", self.channel_id, optional=kind is FeeKind.PLATFORM_SHARE)
        check_bp(owner, "bp", self.bp)
        _check_validity(owner, self.valid_from_ms, self.valid_to_ms, self.created_at_ms)


@dataclass(frozen=True, slots=True)
class Fees:
    """The fee settings of one channel at one time; a missing setting is 0 bp, rule id None."""

    platform_share_bp: int = 0  # of each pool (product and group-leader)
    channel_fee_bp: int = 0  # of the PAID amount
    fans_share_bp: int = 0  # of the product pool
    platform_share_rule_id: str | None = None
    channel_fee_rule_id: str | None = None
    fans_share_rule_id: str | None = None


class FeeBook:
    """Fee settings by (kind, channel); a channel's platform share overrides the platform-wide."""

    def __init__(self, settings: Iterable[FeeSetting]) -> None:
        self._index: dict[tuple[FeeKind, str | None], list[_Version[int]]] = {}
        for setting in _checked("fee_book", FeeSetting, settings):
            self._index.setdefault((setting.kind, setting.channel_id), []).append(_version(
                setting.rule_id, setting.valid_from_ms, setting.valid_to_ms,
                setting.created_at_ms, setting.bp))
        _newest_first(self._index)

    def _get(self, kind: FeeKind, channel_id: str | None, at_ms: int) -> _Version[int] | None:
        return _valid(self._index.get((kind, channel_id)), at_ms)

    def lookup(self, channel_id: str | None, at_ms: int) -> Fees:
        """The fees on ``channel_id`` at ``at_ms``; None: platform-wide settings only."""
        platform = None if channel_id is None else self._get(FeeKind.PLATFORM_SHARE, channel_id,
                                                             at_ms)
        if platform is None:
            platform = self._get(FeeKind.PLATFORM_SHARE, None, at_ms)
        channel = None if channel_id is None else self._get(FeeKind.CHANNEL_FEE, channel_id, at_ms)
        fans = None if channel_id is None else self._get(FeeKind.FANS_SHARE, channel_id, at_ms)
        return Fees(
            platform_share_bp=0 if platform is None else platform.choice,
            channel_fee_bp=0 if channel is None else channel.choice,
            fans_share_bp=0 if fans is None else fans.choice,
            platform_share_rule_id=None if platform is None else platform.rule_id,
            channel_fee_rule_id=None if channel is None else channel.rule_id,
            fans_share_rule_id=None if fans is None else fans.rule_id)
