"""Running a real edge process for tests, and talking raw HTTP/1.1 to it.

The raw client exists because hostile inputs (bad percent-encoding, raw
non-UTF-8 bytes, CRLF in the request line, giant queries) must reach the
server byte for byte; HTTP libraries normalize or refuse to send them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import sys
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from contracts.keys import KeyRing, generate_ring
from contracts.links import mint_link
from contracts.targets import AllowList
from devstack.processes import ManagedProcess, free_port, port_accepts

ALLOWED = "shop.example.com,*.shop.example.com"
# Buyer numbers are unique across every load run of a test process: the same
# buyer clicking the same link again within the window would be a duplicate.
_BUYERS = itertools.count()
TARGET = "https://shop.example.com/item/42?src=test"


@dataclass
class Keys:
    link: KeyRing = field(default_factory=lambda: generate_ring(("t1",)))
    cookie: KeyRing = field(default_factory=lambda: generate_ring(("c1",)))

    def env(self) -> dict[str, str]:
        return {"CPS_LINK_KEYS": self.link.to_text(), "CPS_COOKIE_KEYS": self.cookie.to_text()}


def mint(keys: Keys, *, promoter: str = "p1", channel: str = "live", target: str = TARGET,
         ttl: int = 3600, base: str = "http://edge.test/c", **kwargs: object) -> str:
    return mint_link(base, ring=keys.link, promoter_id=promoter, channel_id=channel,
                     target=target, ttl_seconds=ttl, allow=AllowList.parse(ALLOWED),
                     **kwargs)  # type: ignore[arg-type]


def path_of(link: str) -> str:
    """The request target (path + query) of a full link URL."""
    return "/" + link.split("://", 1)[1].split("/", 1)[1]


class EdgeProcess:
    """``cps-edge serve`` in a child process with a test environment."""

    def __init__(self, tmp: Path, keys: Keys, *, kafka: str, redis: str,
                 env: dict[str, str] | None = None, workers: int = 1,
                 server: str = "granian") -> None:
        self.port = free_port()
        self.tmp = tmp
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CPS_")},
            **keys.env(),
            "CPS_ALLOWED_TARGET_HOSTS": ALLOWED,
            "CPS_KAFKA_BOOTSTRAP": kafka,
            "CPS_REDIS_URL": redis,
            "CPS_SPOOL_DIR": str(tmp / "spool"),
            "CPS_SPOOL_FSYNC": "false",
            "CPS_VERDICT_HEADER": "true",
            "CPS_RATE_LIMIT_PER_S": "0",
            "CPS_FORWARDED_HOPS": "1",
            "CPS_KAFKA_TIMEOUT_MS": "1000",
            "CPS_REDIS_TIMEOUT_MS": "300",
            "CPS_PROBE_INTERVAL_MS": "200",
            **(env or {}),
        }
        self.proc = ManagedProcess(
            [sys.executable, "-m", "edge.cli", "serve", "--port", str(self.port),
             "--workers", str(workers), "--server", server],
            log_path=tmp / f"edge-{self.port}.log", env=self.env, name="edge")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> EdgeProcess:
        self.proc.start(ready=lambda: port_accepts("127.0.0.1", self.port), timeout=timeout)
        return self

    def stop(self, timeout: float = 30) -> int | None:
        return self.proc.stop(timeout=timeout)

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics as ``name{labels}`` -> value."""
        status, body = self.get("/metrics")
        assert status == 200
        out: dict[str, float] = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def wait_for(self, predicate_name: str, predicate: object,
                 timeout: float = 30) -> dict[str, float]:
        """Poll /metrics until ``predicate(metrics)`` holds; fail with the last metrics."""
        deadline = time.monotonic() + timeout
        m: dict[str, float] = {}
        while time.monotonic() < deadline:
            m = self.metrics()
            if predicate(m):  # type: ignore[operator]
                return m
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {predicate_name}; metrics: "
                             f"{ {k: v for k, v in m.items() if 'bucket' not in k} }\n"
                             f"edge log:\n{self.proc.tail(40)}")

    def log(self) -> str:
        return self.proc.tail(200)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def verdict(self) -> str | None:
        return self.headers.get("x-cps-verdict")

    @property
    def location(self) -> str | None:
        return self.headers.get("location")

    @property
    def click_id(self) -> str | None:
        m = re.search(r"[?&]cps_click_id=([0-9a-f]{28})", self.location or "")
        return m.group(1) if m else None


async def _read_response(reader: asyncio.StreamReader, method: str = "GET") -> Response:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    body = b""
    if method != "HEAD" and "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif method != "HEAD" and headers.get("transfer-encoding") == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    return Response(status, headers, body)


async def raw_request(port: int, raw: bytes, *, method: str = "GET",
                      timeout: float = 5) -> Response | None:
    """Send raw bytes, read one response; None if the server closed without answering."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(_read_response(reader, method), timeout)
    except (asyncio.IncompleteReadError, ConnectionResetError):
        return None
    finally:
        writer.close()
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            await writer.wait_closed()


def get_request(path: str | bytes, headers: Iterable[tuple[str, str]] = (),
                method: str = "GET") -> bytes:
    target = path.encode("latin-1") if isinstance(path, str) else path
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: edge.test"]
    lines += [f"{k}: {v}".encode("latin-1") for k, v in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


@dataclass
class LoadResult:
    responses: list[Response] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def valid_click_ids(self) -> list[str]:
        return [r.click_id for r in self.responses if r.verdict == "valid" and r.click_id]

    def by_status(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for r in self.responses:
            out[r.status] = out.get(r.status, 0) + 1
        return out


async def click_load(port: int, paths: list[str], *, total: int | None = None,
                     duration: float | None = None, concurrency: int = 8,
                     stop: asyncio.Event | None = None, result: LoadResult | None = None,
                     ) -> LoadResult:
    """Keep-alive GETs, each as a different buyer (own X-Forwarded-For and User-Agent).

    Stops after ``total`` requests, ``duration`` seconds, or when ``stop`` is set.
    Connection errors are recorded and the connection is reopened.
    """
    result = result or LoadResult()
    sent = itertools.count()
    deadline = time.monotonic() + duration if duration else None

    def more() -> int | None:
        if stop is not None and stop.is_set():
            return None
        if deadline is not None and time.monotonic() > deadline:
            return None
        if total is not None and next(sent) >= total:
            return None
        return next(_BUYERS)

    async def worker(w: int) -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while (n := more()) is not None:
            ip = f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
            raw = get_request(paths[n % len(paths)], [
                ("User-Agent", f"Mozilla/5.0 (test buyer {n})"), ("X-Forwarded-For", ip)])
            try:
                if conn is None:
                    conn = await asyncio.open_connection("127.0.0.1", port)
                conn[1].write(raw)
                await conn[1].drain()
                result.responses.append(await asyncio.wait_for(_read_response(conn[0]), 10))
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as err:
                result.errors.append(f"{type(err).__name__}: {err}")
                if conn is not None:
                    conn[1].close()
                conn = None
                await asyncio.sleep(0.05)
        if conn is not None:
            conn[1].close()

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return result


def click_ids_in(records: Iterable[object]) -> list[str]:
    """click_id of every *valid* click event among Kafka records (duplicates kept)."""
    out = []
    for r in records:
        event = orjson.loads(r.value)  # type: ignore[attr-defined]
        if event["verdict"] == "valid":
            out.append(event["click_id"])
    return out
