"""The click store, read-only, over HTTP: for support tools, the promoter back-end, debugging.

The library call is the store itself (``ClickStore.latest``/``latest_sitewide``/
``get``); this app is a thin, strict JSON skin over it:

* ``GET /clicks/latest?buyer=B&shop=S&at=T_MS[&window_ms=W]``: the latest valid
  click by buyer ``B`` for shop ``S`` at or before ``T_MS`` within the window
  (default 15 days); without ``shop``, the latest click on a site-wide link.
* ``GET /clicks/{click_id}``: one click by id.

Answers: 200 with the click (``StoredClick.to_dict``), 404 when there is none,
400 with the reason for a bad, missing, repeated or unknown parameter, 503
when the store cannot be reached.  Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from attribution_worker.click_store.base import (
    CLICK_ID_PATTERN,
    DEFAULT_WINDOW_MS,
    MAX_BUYER_KEY_CHARS,
    MAX_TS_MS,
    ClickStore,
    ClickStoreError,
    StoredClick,
)
from contracts.links import ID_PATTERN

_LATEST_PARAMS = frozenset(["buyer", "shop", "at", "window_ms"])
# An integer query parameter: plain digits, no sign, no spaces, at most 13 of them.
_MAX_DIGITS = len(str(MAX_TS_MS))


class BadRequest(ValueError):
    """A request the API cannot answer; the message names the parameter."""


def json_response(status: int, body: Mapping[str, Any]) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers={"cache-control": "no-store"})


def _single(params: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in params:
        if name not in _LATEST_PARAMS:
            raise BadRequest(f"unknown parameter {name!r} (known: buyer, shop, at, window_ms)")
        if name in out:
            raise BadRequest(f"parameter {name!r} given more than once")
        out[name] = value
    return out


def _millis(params: Mapping[str, str], name: str, default: int | None) -> int:
    raw = params.get(name)
    if raw is None:
        if default is None:
            raise BadRequest(f"parameter {name!r} is required (milliseconds since the epoch)")
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= _MAX_DIGITS):
        raise BadRequest(f"parameter {name!r} must be a whole number of milliseconds, "
                         f"0 to {MAX_TS_MS}")
    return int(raw)


def parse_latest(params: list[tuple[str, str]], *, default_window_ms: int,
                 max_window_ms: int) -> tuple[str, str | None, int, int]:
    """``(buyer, shop or None, at_ms, window_ms)`` from the query, or ``BadRequest``."""
    query = _single(params)
    buyer = query.get("buyer", "")
    if not buyer:
        raise BadRequest("parameter 'buyer' is required (the buyer key)")
    if len(buyer) > MAX_BUYER_KEY_CHARS:
        raise BadRequest(f"parameter 'buyer' is longer than {MAX_BUYER_KEY_CHARS} characters")
    shop = query.get("shop")
    if shop is not None and not ID_PATTERN.fullmatch(shop):
        raise BadRequest(f"parameter 'shop' must match {ID_PATTERN.pattern}")
    at_ms = _millis(query, "at", None)
    window_ms = _millis(query, "window_ms", default_window_ms)
    if window_ms > max_window_ms:
        raise BadRequest(f"parameter 'window_ms' exceeds the store's retention ({max_window_ms})")
    return buyer, shop, at_ms, window_ms


def create_app(store: ClickStore, *, default_window_ms: int = DEFAULT_WINDOW_MS) -> Starlette:
    """The read-only app over ``store`` (which the caller opens and closes)."""
    max_window_ms = store.retention_ms

    async def latest(request: Request) -> Response:
        try:
            buyer, shop, at_ms, window_ms = parse_latest(
                request.query_params.multi_items(), default_window_ms=default_window_ms,
                max_window_ms=max_window_ms)
        except BadRequest as err:
            return json_response(400, {"error": str(err)})
        try:
            if shop is None:
                found = await store.latest_sitewide(buyer, at_ms, window_ms)
            else:
                found = await store.latest(buyer, shop, at_ms, window_ms)
        except ClickStoreError as err:
            return json_response(503, {"error": f"click store unavailable: {err}"})
        where = f"shop {shop}" if shop is not None else "a site-wide link"
        return _found(found, f"no click by this buyer for {where} in "
                             f"[{max(at_ms - window_ms, 0)}, {at_ms}]")

    async def by_id(request: Request) -> Response:
        click_id = request.path_params["click_id"]
        if request.query_params:
            return json_response(400, {"error": "this endpoint takes no parameters"})
        if not CLICK_ID_PATTERN.fullmatch(click_id):
            return json_response(400, {"error": "click id must be 28 lowercase hex characters"})
        try:
            found = await store.get(click_id)
        except ClickStoreError as err:
            return json_response(503, {"error": f"click store unavailable: {err}"})
        return _found(found, f"no click {click_id} (unknown or past retention)")

    return Starlette(routes=[Route("/clicks/latest", latest, methods=["GET"]),
                             Route("/clicks/{click_id}", by_id, methods=["GET"])])


def _found(click: StoredClick | None, missing: str) -> Response:
    if click is None:
        return json_response(404, {"error": missing})
    return json_response(200, click.to_dict())
