"""``cps-edge serve``: run the redirect edge.

    cps-edge serve [--host H] [--port N] [--workers K]

Configuration comes from ``CPS_*`` environment variables (README); it is
validated here, before any worker starts, so a bad deployment fails at once
with a message naming the variable instead of a traceback per worker.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from contracts.settings import ConfigError, load_settings
from edge.settings import EdgeSettings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cps-edge", description="The CPS redirect edge.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve redirects")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, default=1,
                   help="worker processes (one per core is the usual choice)")
    s.add_argument("--server", choices=("granian", "uvicorn"), default="granian",
                   help="ASGI server (granian measured faster: bench/RESULTS.md)")
    sub.add_parser("check-config", help="validate the CPS_* environment and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(EdgeSettings)
    except ConfigError as err:
        print(f"cps-edge: {err}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(f"configuration ok: link keys {list(settings.link_keys)}, cookie keys "
              f"{list(settings.cookie_keys)}, targets {settings.allowed_target_hosts!r}")
        return 0
    if args.workers < 1:
        print("cps-edge: --workers must be at least 1", file=sys.stderr)
        return 2
    metrics_dir: Path | None
    if args.workers > 1 and settings.metrics_dir is None:
        # Workers share metrics through files; each run starts from a clean directory.
        metrics_dir = Path(tempfile.gettempdir()) / f"cps-edge-metrics-{os.getpid()}"
        os.environ["CPS_METRICS_DIR"] = str(metrics_dir)
    else:
        metrics_dir = settings.metrics_dir
    if metrics_dir is not None:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return serve(args.server, "edge.app:create_app", factory=True, host=args.host,
                 port=args.port, workers=args.workers, log_level=settings.log_level)


def serve(server: str, target: str, *, factory: bool, host: str, port: int, workers: int,
          log_level: str) -> int:
    """Run ``target`` under ``server`` with the edge's server settings.

    The benchmark serves its bare-302 baseline through this same function, so
    edge and baseline always run under identical server settings.
    """
    if server == "uvicorn":
        return _serve_uvicorn(target, factory, host, port, workers, log_level)
    return _serve_granian(target, factory, host, port, workers, log_level)


def _serve_granian(target: str, factory: bool, host: str, port: int, workers: int,
                   log_level: str) -> int:
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.log import LogLevels

    Granian(
        target, factory=factory, address=host, port=port, workers=workers,
        interface=Interfaces.ASGI, loop=Loops.uvloop, http=HTTPModes.http1, websockets=False,
        log_level=LogLevels(log_level), log_access=False, respawn_failed_workers=True,
        # Graceful shutdown flushes clicks; give it the time it may need.
        workers_kill_timeout=60,
    ).serve()
    return 0


def _serve_uvicorn(target: str, factory: bool, host: str, port: int, workers: int,
                   log_level: str) -> int:
    import uvicorn

    uvicorn.run(
        target, factory=factory, interface="asgi3", host=host, port=port, workers=workers,
        loop="uvloop", http="httptools", lifespan="on", log_level=log_level,
        access_log=False, server_header=False, proxy_headers=False,
        timeout_graceful_shutdown=10, timeout_keep_alive=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
