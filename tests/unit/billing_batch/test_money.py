"""Integer money (billing_batch.money): half-even basis points, percent parsing and formatting."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, localcontext

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from billing_batch.money import (
    BP_PER_UNIT,
    apply_bp,
    check_bp,
    check_id,
    check_int,
    format_bp,
    parse_percent_bp,
)

BIG = 10**40


def decimal_half_even(amount: int, rate_bp: int) -> int:
    with localcontext() as ctx:
        ctx.prec = 200
        exact = Decimal(amount * rate_bp) / Decimal(BP_PER_UNIT)
        return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


@pytest.mark.parametrize(("amount", "rate_bp", "expected"), [
    (10000, 2000, 2000),  # SPEC 9: 20 % of ¥100.00
    (10000, 1000, 1000),
    (2000, 1000, 200),
    (10000, 500, 500),
    (12345, 1234, 1523),  # 1523.373
    (1, 5000, 0),  # 0.5 -> 0 (even)
    (3, 5000, 2),  # 1.5 -> 2
    (5, 5000, 2),  # 2.5 -> 2
    (7, 5000, 4),  # 3.5 -> 4
    (15, 1000, 2),  # 1.5 -> 2
    (25, 1000, 2),  # 2.5 -> 2
    (14, 1000, 1),  # 1.4 -> 1
    (16, 1000, 2),  # 1.6 -> 2
    (-1, 5000, 0),  # -0.5 -> 0
    (-3, 5000, -2),  # -1.5 -> -2
    (-5, 5000, -2),  # -2.5 -> -2
    (-25, 2000, -5),
    (-16, 1000, -2),
    (-14, 1000, -1),
    (0, 10000, 0),
    (123, 0, 0),
    (123, 10000, 123),
    (1, 1, 0),  # 0.0001
    (9999, 1, 1),  # 0.9999
    (5000, 1, 0),  # 0.5 exactly -> 0
    (15000, 1, 2),  # 1.5 -> 2
    (10**30 + 1, 5000, 5 * 10**29),  # ...0.5 -> even
])
def test_apply_bp_table(amount: int, rate_bp: int, expected: int) -> None:
    assert apply_bp(amount, rate_bp) == expected
    assert decimal_half_even(amount, rate_bp) == expected


@given(st.integers(min_value=-BIG, max_value=BIG), st.integers(min_value=-BIG, max_value=BIG))
@example(1, 5000)
@example(-1, 5000)
@example(3, -5000)
def test_apply_bp_equals_decimal_half_even_for_all_ints(amount: int, rate_bp: int) -> None:
    assert apply_bp(amount, rate_bp) == decimal_half_even(amount, rate_bp)


@given(st.integers(min_value=-BIG, max_value=BIG), st.integers(min_value=0, max_value=BIG))
def test_apply_bp_is_odd_symmetric(amount: int, rate_bp: int) -> None:
    assert apply_bp(-amount, rate_bp) == -apply_bp(amount, rate_bp)


@given(st.integers(min_value=-BIG, max_value=BIG), st.integers(min_value=0, max_value=BIG),
       st.integers(min_value=0, max_value=BIG))
def test_apply_bp_is_monotone_and_within_half_a_unit(amount: int, rate_bp: int,
                                                     more: int) -> None:
    assert apply_bp(amount, rate_bp) <= apply_bp(amount + more, rate_bp)
    assert abs(apply_bp(amount, rate_bp) * BP_PER_UNIT - amount * rate_bp) <= BP_PER_UNIT // 2


@given(st.integers(min_value=0, max_value=BIG), st.integers(min_value=0, max_value=BP_PER_UNIT))
def test_apply_bp_of_a_rate_never_exceeds_the_amount(amount: int, rate_bp: int) -> None:
    assert 0 <= apply_bp(amount, rate_bp) <= amount


@pytest.mark.parametrize(("amount", "rate_bp"), [
    (1.0, 100), (100, 1.5), (True, 100), (100, False), (Decimal(1), 1), ("1", 1), (None, 1)])
def test_apply_bp_takes_ints_only(amount: object, rate_bp: object) -> None:
    with pytest.raises(TypeError, match="two ints"):
        apply_bp(amount, rate_bp)  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "bp"), [
    ("20", 2000), ("12.5", 1250), ("12.34", 1234), ("0.01", 1), ("0", 0), ("0.0", 0),
    ("0.00", 0), ("100", 10000), ("100.00", 10000), ("5", 500), ("99.99", 9999),
    ("007", 700), ("0100", 10000), ("20%", 2000), ("  12.34%  ", 1234), ("1.1", 110),
    ("\t3\n", 300),
])
def test_parse_percent_bp(text: str, bp: int) -> None:
    assert parse_percent_bp(text) == bp


@pytest.mark.parametrize(("text", "message"), [
    ("12.345", "at most two decimals"),
    ("0.001", "at most two decimals"),
    ("1.000", "at most two decimals"),
    ("-1", "cannot be negative"),
    ("-0", "cannot be negative"),
    (" -12.5", "cannot be negative"),
    ("100.01", "cannot exceed 100"),
    ("101", "cannot exceed 100"),
    ("1000", "cannot exceed 100"),
    ("9" * 5000, "cannot exceed 100"),
    ("", "not a percentage"),
    ("   ", "not a percentage"),
    ("abc", "not a percentage"),
    ("+5", "not a percentage"),
    ("1e2", "not a percentage"),
    (".5", "not a percentage"),
    ("5.", "not a percentage"),
    ("1,5", "not a percentage"),
    ("20 %", "not a percentage"),
    ("20%%", "not a percentage"),
    ("%", "not a percentage"),
    ("nan", "not a percentage"),
    ("inf", "not a percentage"),
    ("1_0", "not a percentage"),
    ("\u0661\u0662", "not a percentage"),  # Arabic-Indic digits
    ("１２", "not a percentage"),  # noqa: RUF001 - fullwidth digits, on purpose
    ("0x10", "not a percentage"),
])
def test_parse_percent_bp_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_percent_bp(text)


def test_parse_percent_bp_message_shows_the_text_shortened() -> None:
    with pytest.raises(ValueError, match=r"'x{40}\.\.\.'"):
        parse_percent_bp("x" * 1000)
    with pytest.raises(ValueError, match="must be text"):
        parse_percent_bp(12)  # type: ignore[arg-type]


@pytest.mark.parametrize(("bp", "text"), [
    (1234, "12.34%"), (2000, "20%"), (1250, "12.5%"), (1, "0.01%"), (10, "0.1%"), (0, "0%"),
    (10000, "100%"), (9999, "99.99%"), (105, "1.05%"), (-1, "-0.01%"), (-1250, "-12.5%"),
])
def test_format_bp(bp: int, text: str) -> None:
    assert format_bp(bp) == text


def test_format_bp_takes_ints_only() -> None:
    with pytest.raises(TypeError):
        format_bp(12.5)  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=BP_PER_UNIT))
def test_format_then_parse_round_trips(bp: int) -> None:
    assert parse_percent_bp(format_bp(bp)) == bp
    assert parse_percent_bp(format_bp(bp).rstrip("%")) == bp


@given(st.integers(min_value=0, max_value=100), st.integers(min_value=0, max_value=99))
def test_parse_two_decimals(whole: int, cents: int) -> None:
    text = f"{whole}.{cents:02d}"
    if whole == 100 and cents:
        with pytest.raises(ValueError, match="cannot exceed 100"):
            parse_percent_bp(text)
    else:
        assert parse_percent_bp(text) == whole * 100 + cents


def test_checks_name_the_field() -> None:
    assert check_bp("rule", "rate_bp", 0) == 0
    assert check_bp("rule", "rate_bp", 10000) == 10000
    for bad in (-1, 10001, 1.0, True, None, "5"):
        with pytest.raises(ValueError, match=r"^rule\.rate_bp: "):
            check_bp("rule", "rate_bp", bad)
    check_id("rule", "shop_id", "s-1")
    check_id("rule", "shop_id", None, optional=True)
    for bad_id in ("", " s", "s ", None, 5, "x" * 129):
        with pytest.raises(ValueError, match=r"^rule\.shop_id: "):
            check_id("rule", "shop_id", bad_id)
    check_int("rule", "at_ms", 0)
    check_int("rule", "at_ms", None, optional=True)
    check_int("rule", "to_ms", 5, low=5)
    for bad_int in (-1, 1.0, True, None, "1"):
        with pytest.raises(ValueError, match=r"^rule\.at_ms: must be an integer >= 0"):
            check_int("rule", "at_ms", bad_int)
