"""The edge's ASGI application.

The redirect path is dispatched before Starlette sees the request: routing,
middleware and Request objects cost more than the redirect itself.  Starlette
serves everything else (health, readiness, metrics) and runs the lifespan
that starts and drains click delivery.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from contracts.settings import load_settings
from edge import telemetry
from edge.delivery.deliverer import Deliverer
from edge.delivery.kafka_sink import KafkaSink
from edge.delivery.redis_fallback import RedisFallback
from edge.delivery.ring import RING_FILE, HandoffRing
from edge.delivery.spool import DiskSpool
from edge.redirect import RedirectEndpoint
from edge.settings import EdgeSettings

log = logging.getLogger("cps.edge")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class EdgeApp:
    def __init__(self, settings: EdgeSettings) -> None:
        self.settings = settings
        # Open the metric slots first: the redirect endpoint binds to them.
        telemetry.REGISTRY.open(settings.metrics_dir)
        self.spool = DiskSpool(settings.spool_dir, fsync=settings.spool_fsync)
        self.kafka = KafkaSink(settings.kafka_bootstrap, timeout_s=settings.kafka_timeout_ms / 1000,
                               client_id=settings.kafka_client_id)
        self.fallback = RedisFallback(settings.redis_url,
                                      timeout_s=settings.redis_timeout_ms / 1000)
        self.deliverer = Deliverer(self.kafka, self.fallback, self.spool,
                                   max_events=settings.buffer_max_events,
                                   batch_events=settings.batch_max_events,
                                   probe_interval_s=settings.probe_interval_ms / 1000,
                                   linger_s=settings.delivery_linger_ms / 1000)
        self.redirect = RedirectEndpoint(settings, self.deliverer.submit)
        self._path = settings.redirect_path
        self._starlette = Starlette(
            routes=[Route("/healthz", self._healthz, methods=["GET", "HEAD"]),
                    Route("/readyz", self._readyz, methods=["GET", "HEAD"]),
                    Route("/metrics", self._metrics, methods=["GET"])],
            lifespan=self._lifespan)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Returns the handler's coroutine instead of awaiting it: one coroutine
        # frame less per redirect.  Servers await whatever the app returns
        # (uvicorn must be told interface="asgi3", it guesses from async def).
        if scope["type"] == "http" and scope["path"] == self._path:
            return self.redirect(scope, send)
        return self._starlette(scope, receive, send)

    @contextlib.asynccontextmanager
    async def _lifespan(self, _: Starlette) -> AsyncIterator[None]:
        self.spool.open()
        if self.settings.handoff_ring_bytes:
            self._open_ring()
        await self.deliverer.start()
        # Everything built so far (the duplicate table's half-million slots, the
        # libraries) lives as long as the worker: keep it out of the cyclic GC's
        # full collections, which otherwise stall redirects for ~10 ms each.
        gc.collect()
        gc.freeze()
        telemetry.workers.set(1)
        log.info("edge worker ready: redirect path %s, delivery %s", self._path,
                 "fallback" if self.deliverer.fallback_mode else "kafka")
        try:
            yield
        finally:
            log.info("edge worker stopping: flushing %d buffered clicks", self.deliverer.buffered)
            await self.deliverer.close(self.settings.shutdown_timeout_s)
            self.spool.close()
            telemetry.workers.set(0)

    def _open_ring(self) -> None:
        try:
            ring = HandoffRing(self.spool.own_path / RING_FILE, self.settings.handoff_ring_bytes)
        except OSError as err:
            # Serving without crash safety beats not serving: say so loudly.
            log.error("hand-off ring unavailable (%s, CPS_HANDOFF_RING_BYTES=%d): a crash of "
                      "this worker would lose its buffered clicks", err,
                      self.settings.handoff_ring_bytes)
            return
        self.deliverer.use_ring(ring)

    async def _healthz(self, _: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def _readyz(self, _: Request) -> Response:
        d = self.deliverer
        body = orjson.dumps({"ready": d.ready, "delivery": "fallback" if d.fallback_mode
                             else "kafka", "redis": d.redis_ok, "buffered": d.buffered})
        return Response(body, status_code=200 if d.ready else 503,
                        media_type="application/json")

    async def _metrics(self, _: Request) -> Response:
        telemetry.link_cache.set(self.redirect.cached_links)
        telemetry.buffer_events.set(self.deliverer.buffered)
        return Response(telemetry.REGISTRY.render(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")


def create_app() -> EdgeApp:
    """ASGI factory for servers (``uvicorn --factory edge.app:create_app``)."""
    settings = load_settings(EdgeSettings)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=settings.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return EdgeApp(settings)
