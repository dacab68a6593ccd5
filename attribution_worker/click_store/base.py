"""What the click store keeps, and the one narrow interface both backends offer.

The attribution rule (SPEC section 7) needs exactly one question answered, fast
and often: *the latest valid click by buyer B for shop S (or on a site-wide
link), at or before T, within the window*.  Besides that the store resolves a
click by its id (a sealed token names its click) and takes batches of clicks
from the persister.  Nothing else: a narrow interface keeps the two backends
(``redis_store``: one memory-sized Redis; ``bigtable_store``: Bigtable/HBase
for scale-out) interchangeable and testable by one suite.

Only ``valid`` clicks are stored (the others are not evidence).  A stored click
is the small projection of the click event attribution needs, about 130 bytes
as compact JSON (``to_bytes``), against ~520 bytes for the event itself.

Time semantics, shared by both backends:

* ``latest(buyer, shop, at_ms, window_ms)`` returns the click with the greatest
  ``ts_ms`` in ``[at_ms - window_ms, at_ms]`` (both ends inclusive, to the ms);
  among clicks of the same millisecond the greatest click id wins (click ids are
  time-sortable, so that is the later-minted one).  A click after ``at_ms`` is
  never returned, however close.
* Entries expire ``retention_ms`` after their click (default: the 15-day window
  + 1 day margin for delayed attribution); a click already past its retention
  is not written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from contracts.clicks import ClickEvent, Verdict
from contracts.links import ID_PATTERN, MAX_SUB_ID_CHARS, MAX_SUB_IDS

DAY_MS = 86_400_000
DEFAULT_WINDOW_MS = 15 * DAY_MS
# Delayed attribution retries an order for a while after its creation; a click
# must outlive the window by at least that long.
DEFAULT_RETENTION_MARGIN_MS = 1 * DAY_MS
DEFAULT_RETENTION_MS = DEFAULT_WINDOW_MS + DEFAULT_RETENTION_MARGIN_MS

# 13 decimal digits of ms reach the year 2286: row keys carry a fixed-width
# reverse timestamp, so every timestamp must fit.
MAX_TS_MS = 10**13 - 1
MAX_BUYER_KEY_CHARS = 256
STORED_VERSION = 1
CLICK_ID_PATTERN = re.compile(r"[0-9a-f]{28}")


class ClickStoreError(Exception):
    """The store could not do what was asked (unreachable, refused, corrupt data)."""


class NotStorable(ValueError):
    """A click that cannot be stored; the message names the field and why."""


@dataclass(frozen=True, slots=True, init=False)
class StoredClick:
    """Immutable (a frozen dataclass), built by ``__new__`` below, checked on construction.

    The frozen dataclass ``__init__`` sets each field through
    ``object.__setattr__`` (~0.25 us a field on the dev VM, 2.5 us a click, a
    third of the persister's decoding); ``__new__`` fills a plain slots object
    of the same layout (``_StoredClickFields``) with ordinary assignments and
    then makes it a ``StoredClick`` (``__class__`` assignment, which CPython
    allows between classes of one layout): ~0.8 us.  Same fields, order,
    keywords, equality, hash and immutability as the dataclass; ``replace``,
    ``copy`` and ``pickle`` go through ``__new__`` too, so every instance is
    checked (``NotStorable`` names the first bad field).
    """

    click_id: str
    ts_ms: int
    buyer_key: str
    promoter_id: str
    channel_id: str
    position_id: str | None
    shop_id: str | None  # None: a site-wide link
    product_id: str | None
    sub_ids: tuple[str, ...]
    link_exp: int | None  # Unix seconds

    def __new__(cls, click_id: str, ts_ms: int, buyer_key: str, promoter_id: str,
                channel_id: str, position_id: str | None, shop_id: str | None,
                product_id: str | None, sub_ids: tuple[str, ...],
                link_exp: int | None) -> StoredClick:
        fields: Any = _StoredClickFields()  # becomes the StoredClick
        fields.click_id = click_id
        fields.ts_ms = ts_ms
        fields.buyer_key = buyer_key
        fields.promoter_id = promoter_id
        fields.channel_id = channel_id
        fields.position_id = position_id
        fields.shop_id = shop_id
        fields.product_id = product_id
        fields.sub_ids = sub_ids
        fields.link_exp = link_exp
        fields.__class__ = cls
        click: StoredClick = fields
        problem = _problem(click)
        if problem:
            raise NotStorable(problem)
        return click

    def __reduce__(self) -> tuple[type[StoredClick], tuple[Any, ...]]:
        return type(self), tuple(getattr(self, name) for name in self.__slots__)

    @property
    def sitewide(self) -> bool:
        return self.shop_id is None

    @classmethod
    def from_event(cls, event: ClickEvent) -> StoredClick:
        """The stored form of a ``valid`` click event; raises ``NotStorable`` otherwise."""
        if event.verdict is not Verdict.VALID:
            raise NotStorable(f"verdict: only valid clicks are stored, not {event.verdict.value}")
        if event.promoter_id is None or event.channel_id is None:
            raise NotStorable("promoter_id/channel_id: a valid click needs both")
        return cls(click_id=event.click_id, ts_ms=event.ts, buyer_key=event.buyer_key,
                   promoter_id=event.promoter_id, channel_id=event.channel_id,
                   position_id=event.position_id, shop_id=event.shop_id,
                   product_id=event.product_id, sub_ids=event.sub_ids, link_exp=event.link_exp)

    def to_bytes(self) -> bytes:
        """Compact JSON array, the value both backends keep (~130 bytes)."""
        return orjson.dumps([STORED_VERSION, self.click_id, self.ts_ms, self.buyer_key,
                             self.promoter_id, self.channel_id, self.position_id, self.shop_id,
                             self.product_id, self.sub_ids, self.link_exp])

    @classmethod
    def from_bytes(cls, data: bytes | str) -> StoredClick:
        try:
            row = orjson.loads(data)
        except orjson.JSONDecodeError as err:
            raise ClickStoreError(f"stored click is not JSON: {err}") from None
        if not (isinstance(row, list) and len(row) == 11 and row[0] == STORED_VERSION
                and isinstance(row[9], list)):
            raise ClickStoreError(f"stored click has an unknown layout: {data[:80]!r}")
        _, click_id, ts_ms, buyer, promoter, channel, position, shop, product, subs, exp = row
        try:
            return cls(click_id, ts_ms, buyer, promoter, channel, position, shop, product,
                       tuple(subs), exp)
        except (NotStorable, TypeError) as err:
            raise ClickStoreError(f"stored click is invalid: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object the query API answers with."""
        return {"click_id": self.click_id, "ts_ms": self.ts_ms, "buyer_key": self.buyer_key,
                "promoter_id": self.promoter_id, "channel_id": self.channel_id,
                "position_id": self.position_id, "shop_id": self.shop_id,
                "product_id": self.product_id, "sub_ids": list(self.sub_ids),
                "link_exp": self.link_exp}


class _StoredClickFields:
    """``StoredClick``'s slots, assignable: what ``StoredClick.__new__`` fills."""

    __slots__ = StoredClick.__slots__


# Link ids seen valid (promoters, channels, shops, products repeat across clicks):
# a set lookup instead of a regex match per field, ~1 us per click.
_KNOWN_IDS: set[str] = set()
_MAX_KNOWN_IDS = 1 << 16
_HEX_DIGITS = "0123456789abcdef"


def _valid_id(value: str) -> bool:
    if not ID_PATTERN.fullmatch(value):
        return False
    if len(_KNOWN_IDS) >= _MAX_KNOWN_IDS:
        _KNOWN_IDS.clear()
    _KNOWN_IDS.add(value)
    return True


def _problem(click: StoredClick) -> str | None:
    """Why ``click`` cannot be stored, or None.

    Runs for every click the persister stores: one boolean expression decides
    the common case in ~1 us; only a failing click pays for ``_explain``.
    """
    cid, ts, buyer = click.click_id, click.ts_ms, click.buyer_key
    p, ch, pos, shop, prod = (click.promoter_id, click.channel_id, click.position_id,
                              click.shop_id, click.product_id)
    known = _KNOWN_IDS
    if (type(cid) is str and len(cid) == 28 and not cid.strip(_HEX_DIGITS)
            and type(ts) is int and 0 <= ts <= MAX_TS_MS
            and type(buyer) is str and 0 < len(buyer) <= MAX_BUYER_KEY_CHARS
            and type(p) is str and (p in known or _valid_id(p))
            and type(ch) is str and (ch in known or _valid_id(ch))
            and (pos is None or (type(pos) is str and (pos in known or _valid_id(pos))))
            and (shop is None or (type(shop) is str and (shop in known or _valid_id(shop))))
            and (prod is None or (type(prod) is str and (prod in known or _valid_id(prod))))
            and (click.sub_ids == () or _subs_ok(click.sub_ids))
            and (click.link_exp is None or type(click.link_exp) is int)):
        return None
    return _explain(click)


def _subs_ok(subs: object) -> bool:
    return (type(subs) is tuple and len(subs) <= MAX_SUB_IDS
            and all(type(s) is str and len(s) <= MAX_SUB_ID_CHARS for s in subs))


def _explain(click: StoredClick) -> str | None:
    """The first field of ``click`` that breaks the rules, and why (None: none does)."""
    if type(click.click_id) is not str or not CLICK_ID_PATTERN.fullmatch(click.click_id):
        return "click_id: must be 28 lowercase hex characters"
    if type(click.ts_ms) is not int or not 0 <= click.ts_ms <= MAX_TS_MS:
        return f"ts_ms: must be an integer between 0 and {MAX_TS_MS}"
    if (type(click.buyer_key) is not str or not click.buyer_key
            or len(click.buyer_key) > MAX_BUYER_KEY_CHARS):
        return f"buyer_key: must be 1 to {MAX_BUYER_KEY_CHARS} characters"
    for name in ("promoter_id", "channel_id"):
        value = getattr(click, name)
        if type(value) is not str or not ID_PATTERN.fullmatch(value):
            return f"{name}: must match {ID_PATTERN.pattern}"
    for name in ("position_id", "shop_id", "product_id"):
        value = getattr(click, name)
        if value is not None and (type(value) is not str or not ID_PATTERN.fullmatch(value)):
            return f"{name}: must be null or match {ID_PATTERN.pattern}"
    if not _subs_ok(click.sub_ids):
        return f"sub_ids: at most {MAX_SUB_IDS} strings of at most {MAX_SUB_ID_CHARS} characters"
    if click.link_exp is not None and type(click.link_exp) is not int:
        return "link_exp: must be an integer (Unix seconds) or null"
    return None


class ClickStore(Protocol):
    """The click store as the persister, the attributor and the query API use it."""

    retention_ms: int

    async def put_many(self, clicks: Sequence[StoredClick]) -> int:
        """Store ``clicks``; idempotent by click id (a replay changes nothing).

        Returns how many were new where the backend knows that cheaply (Redis),
        else how many were written (Bigtable: blind, idempotent writes).
        Raises ``ClickStoreError`` when the batch may not have been stored.
        """
        ...

    async def latest(self, buyer_key: str, shop_id: str, at_ms: int,
                     window_ms: int) -> StoredClick | None:
        """The latest click by ``buyer_key`` on a link for ``shop_id``, in the window."""
        ...

    async def latest_sitewide(self, buyer_key: str, at_ms: int,
                              window_ms: int) -> StoredClick | None:
        """The latest click by ``buyer_key`` on a site-wide link (no shop id), in the window."""
        ...

    async def get(self, click_id: str) -> StoredClick | None: ...

    async def close(self) -> None: ...


# -- pure rules both backends share -------------------------------------------


def check_lookup(buyer_key: str, shop_id: str | None) -> None:
    """The arguments of a ``latest`` lookup, checked alike by every backend."""
    if type(buyer_key) is not str or not buyer_key:
        raise ValueError("buyer_key must be a non-empty string")
    if shop_id is not None and (type(shop_id) is not str or not ID_PATTERN.fullmatch(shop_id)):
        raise ValueError(f"shop_id must match {ID_PATTERN.pattern}, not {shop_id!r}")


def window_bounds(at_ms: int, window_ms: int) -> tuple[int, int]:
    """``(lowest, highest)`` click ts to consider, clamped to what a key can hold.

    Raises ``ValueError`` naming the argument for a negative time or window.
    """
    if type(at_ms) is not int or at_ms < 0:
        raise ValueError(f"at_ms must be a non-negative integer, not {at_ms!r}")
    if type(window_ms) is not int or window_ms < 0:
        raise ValueError(f"window_ms must be a non-negative integer, not {window_ms!r}")
    high = min(at_ms, MAX_TS_MS)
    return max(at_ms - window_ms, 0), high


def retained(clicks: Sequence[StoredClick], now_ms: int,
             retention_ms: int) -> list[StoredClick]:
    """The clicks still within their retention at ``now_ms`` (older ones are not written)."""
    floor_ms = now_ms - retention_ms
    return [c for c in clicks if c.ts_ms > floor_ms]


def check_retention(retention_ms: int) -> int:
    if type(retention_ms) is not int or retention_ms <= 0:
        raise ValueError(f"retention_ms must be a positive integer, not {retention_ms!r}")
    return retention_ms


def escape_key_part(value: str) -> str:
    """``value`` with ``%``, ``#``, tab and newline percent-escaped.

    Buyer keys are opaque (a cookie's visitor id today, a device id tomorrow):
    escaped, ``#`` can separate key parts (no buyer key is a prefix of
    another's ``buyer#`` key range) and tab/newline can separate fields.
    """
    if "%" in value or "#" in value or "\t" in value or "\n" in value:
        return (value.replace("%", "%25").replace("#", "%23").replace("\t", "%09")
                .replace("\n", "%0A"))
    return value


def index_suffix(buyer_key: str, shop_id: str | None) -> str:
    """``escaped buyer # shop`` (``*`` for site-wide): the key both backends index under.

    Shop ids match ``[A-Za-z0-9._:-]`` (the link rule), so neither ``#`` nor
    ``*`` can occur in one and ``*`` cannot be confused with a shop.
    """
    return f"{escape_key_part(buyer_key)}#{shop_id if shop_id is not None else '*'}"
