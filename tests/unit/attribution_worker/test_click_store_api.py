"""Query parsing of the read-only click API (pure logic; the app is tested against Redis)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attribution_worker.click_api import BadRequest, parse_latest
from attribution_worker.click_store.base import MAX_TS_MS

DEFAULT, MAX = 1000, 5000


def parse(*params: tuple[str, str]) -> tuple[str, str | None, int, int]:
    return parse_latest(list(params), default_window_ms=DEFAULT, max_window_ms=MAX)


def test_defaults_and_sitewide() -> None:
    assert parse(("buyer", "b"), ("at", "42")) == ("b", None, 42, DEFAULT)
    assert parse(("shop", "s-1"), ("at", "0"), ("buyer", "x#y"), ("window_ms", "5000")) == \
        ("x#y", "s-1", 0, 5000)


@pytest.mark.parametrize(("params", "named"), [
    ([("at", "1")], "buyer"),
    ([("buyer", ""), ("at", "1")], "buyer"),
    ([("buyer", "b" * 257), ("at", "1")], "buyer"),
    ([("buyer", "b")], "at"),
    ([("buyer", "b"), ("at", " 1")], "at"),
    ([("buyer", "b"), ("at", "+1")], "at"),
    ([("buyer", "b"), ("at", "١٢")], "at"),  # non-ASCII digits
    ([("buyer", "b"), ("at", str(MAX_TS_MS * 10))], "at"),
    ([("buyer", "b"), ("at", "1"), ("window_ms", "5001")], "window_ms"),
    ([("buyer", "b"), ("at", "1"), ("shop", "")], "shop"),
    ([("buyer", "b"), ("at", "1"), ("shop", "*")], "shop"),
    ([("buyer", "b"), ("at", "1"), ("limit", "3")], "limit"),
    ([("buyer", "b"), ("buyer", "c"), ("at", "1")], "buyer"),
])
def test_bad_queries_name_the_parameter(params: list[tuple[str, str]], named: str) -> None:
    with pytest.raises(BadRequest, match=named):
        parse(*params)


@given(st.text(max_size=20))
def test_any_at_value_parses_or_names_at(value: str) -> None:
    plain = value.isascii() and value.isdigit() and len(value) <= 13
    if not plain:
        with pytest.raises(BadRequest, match="'at'"):
            parse(("buyer", "b"), ("at", value))
        return
    _, _, at_ms, _ = parse(("buyer", "b"), ("at", value))
    assert at_ms == int(value)
    assert 0 <= at_ms <= MAX_TS_MS
