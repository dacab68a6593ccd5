"""Money and rates as integers: minor units and basis points, never floats (SPEC 8, 9, 11).

* An amount is an ``int`` of minor units (fen/cents): 10000 = ¥100.00.
* A rate is an ``int`` of basis points: 1 bp = 0.01 %, 100 % = ``BP_PER_UNIT``
  = 10000 bp, "12.34 %" = 1234 bp.  SPEC 8 allows two decimals of a percent,
  so every valid rate is exactly an integer number of bp.

``apply_bp(amount_minor, rate_bp)`` is ``amount_minor * rate_bp / 10000``
rounded half to even (banker's rounding, SPEC 9) with one ``divmod``: the
exact product splits into a floor quotient and a remainder ``0 <= r < 10000``;
``2r > 10000`` rounds up, ``2r < 10000`` down, ``2r == 10000`` (exactly .5)
goes to the even neighbour.  Python's floor ``divmod`` keeps the remainder
non-negative for negative amounts too, so ``apply_bp(-25, 2000)`` is -5.0 -> -5
and ``apply_bp(-5, 5000)`` is -2.5 -> -2, the same as ``Decimal`` quantized
with ``ROUND_HALF_EVEN``.  Examples: 10000 at 2000 bp = 2000; 1 at 5000 bp =
0.5 -> 0; 3 at 5000 bp = 1.5 -> 2; 12345 at 1234 bp = 1523.373 -> 1523.

``parse_percent_bp`` reads what an operator types in the CLI ("20", "12.5",
"12.34", "0.01", optionally with a trailing "%" and surrounding blanks) and
refuses, with a message saying why, more than two decimals, a sign, more than
100 %, exponents, non-ASCII digits and anything else.  ``format_bp`` writes
the shortest exact form: 2000 -> "20%", 1250 -> "12.5%", 1234 -> "12.34%",
1 -> "0.01%"; ``parse_percent_bp(format_bp(bp)) == bp`` for 0..10000.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import TypeVar

BP_PER_UNIT = 10_000  # 100 % in basis points
_HALF = BP_PER_UNIT // 2
_E = TypeVar("_E", bound=StrEnum)
MAX_ID_LEN = 128  # ids of rules, shops, products, promoters ...: opaque strings
_PERCENT = re.compile(r"([0-9]+)(?:\.([0-9]+))?%?", re.ASCII)


def apply_bp(amount_minor: int, rate_bp: int) -> int:
    """``amount_minor * rate_bp / 10000`` rounded half to even, in integers (any signs)."""
    if type(amount_minor) is not int or type(rate_bp) is not int:
        raise TypeError(f"apply_bp takes two ints, got {type(amount_minor).__name__} and "
                        f"{type(rate_bp).__name__}")
    quotient, remainder = divmod(amount_minor * rate_bp, BP_PER_UNIT)
    if remainder > _HALF or (remainder == _HALF and quotient & 1):
        return quotient + 1
    return quotient


def check_bp(owner: str, name: str, value: object) -> int:
    """``value`` if it is an int rate of 0..10000 bp, else ``ValueError`` naming ``owner.name``."""
    if type(value) is not int or not 0 <= value <= BP_PER_UNIT:
        raise ValueError(f"{owner}.{name}: must be an integer number of basis points from 0 to "
                         f"{BP_PER_UNIT} (0 to 100 %), got {value!r}")
    return value


def parse_percent_bp(text: str) -> int:
    """Basis points of a percentage with at most two decimals: "12.34" -> 1234, "20%" -> 2000.

    Blanks around the text are ignored; a blank inside ("20 %") is refused.
    """
    if not isinstance(text, str):
        raise ValueError(f"a percentage must be text, got {type(text).__name__}")
    shown = text if len(text) <= 40 else text[:40] + "..."
    stripped = text.strip()
    if stripped.startswith("-"):
        raise ValueError(f"a percentage cannot be negative: {shown!r}")
    match = _PERCENT.fullmatch(stripped)
    if match is None:
        raise ValueError(f"not a percentage: {shown!r}; write a number from 0 to 100 with at "
                         "most two decimals, such as 20, 12.5 or 12.34")
    whole, decimals = match.group(1), match.group(2) or ""
    if len(decimals) > 2:
        raise ValueError(f"a percentage has at most two decimals (0.01 % = 1 bp): {shown!r}")
    if len(whole.lstrip("0")) > 3:  # also keeps int() off a huge digit string
        raise ValueError(f"a percentage cannot exceed 100: {shown!r}")
    bp = int(whole) * 100 + int(decimals.ljust(2, "0"))
    if bp > BP_PER_UNIT:
        raise ValueError(f"a percentage cannot exceed 100: {shown!r}")
    return bp


def format_bp(bp: int) -> str:
    """The shortest exact percentage of ``bp``: 1234 -> "12.34%", 2000 -> "20%", 5 -> "0.05%"."""
    if type(bp) is not int:
        raise TypeError(f"format_bp takes an int, got {type(bp).__name__}")
    sign = "-" if bp < 0 else ""
    whole, cents = divmod(abs(bp), 100)
    if cents == 0:
        return f"{sign}{whole}%"
    return f"{sign}{whole}.{cents:02d}".rstrip("0") + "%"


# ---------------------------------------------------------------- checks shared by the rules


def check_id(owner: str, name: str, value: object, *, optional: bool = False) -> None:
    """``ValueError`` naming ``owner.name`` unless ``value`` is a non-empty id (or None)."""
    if value is None and optional:
        return
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LEN or value.strip() != value:
        raise ValueError(f"{owner}.{name}: must be a non-empty id of at most {MAX_ID_LEN} "
                         "characters without surrounding blanks" + (" or None" if optional else "")
                         + f", got {value!r}")


def check_int(owner: str, name: str, value: object, *, low: int = 0,
              optional: bool = False) -> None:
    """``ValueError`` naming ``owner.name`` unless ``value`` is an int ``>= low`` (or None)."""
    if value is None and optional:
        return
    if type(value) is not int or value < low:
        raise ValueError(f"{owner}.{name}: must be an integer >= {low}"
                         + (" or None" if optional else "") + f", got {value!r}")


def coerce_enum(owner: str, name: str, cls: type[_E], value: object) -> _E:
    """``value`` as a member of ``cls`` (text read from a database becomes the member)."""
    if type(value) is cls:
        return value
    if isinstance(value, str) and value in cls._value2member_map_:
        return cls(value)
    raise ValueError(f"{owner}.{name}: must be one of {', '.join(cls)}, got {value!r}")
