"""``cps-dev``: the edge and everything it needs on one machine, for development.

    cps-dev up [--port 8000] [--workers 1]   broker + redis + edge, prints a demo link
    cps-dev env                              export lines for the dev keys (eval "$(cps-dev env)")
    cps-dev clicks [--follow]                print the click events in the dev broker

State (generated dev keys, Redis AOF, disk spool, logs) lives in ``.cps-dev/``
under the current directory.  The keys are development keys: never deploy them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from contracts.keys import generate_ring
from contracts.links import mint_link
from contracts.settings import ConfigError, load_settings
from contracts.topics import CLICKS_TOPIC
from devstack.kafka_admin import read_topic
from devstack.processes import ManagedProcess, ServiceStartError, free_port, port_accepts
from devstack.stack import LocalStack
from edge.settings import EdgeSettings

STATE_DIR = Path(".cps-dev")
DEMO_HOSTS = "shop.example.com,*.shop.example.com"
DEMO_TARGET = "https://shop.example.com/item/42?utm_source=cps"
# curl's own User-Agent is a script client's, which the edge answers as a bot
# (no cookie); the demo shows a buyer's click, so it sends a browser's.
DEMO_USER_AGENT = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                   "Chrome/126.0.0.0 Safari/537.36")


def _pick_port(preferred: int) -> int:
    return preferred if not port_accepts("127.0.0.1", preferred) else free_port()


def _dev_keys(state: Path) -> dict[str, str]:
    """Generated once per checkout and kept in .cps-dev/keys.env (mode 600)."""
    path = state / "keys.env"
    if not path.exists():
        state.mkdir(parents=True, exist_ok=True)
        text = (f"CPS_LINK_KEYS={generate_ring(('dev1',)).to_text()}\n"
                f"CPS_COOKIE_KEYS={generate_ring(('dev1',)).to_text()}\n")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs}


def _dev_env(state: Path, *, edge_port: int, kafka: str, redis: str) -> dict[str, str]:
    env = {
        "CPS_ALLOWED_TARGET_HOSTS": DEMO_HOSTS,
        "CPS_LINK_BASE_URL": f"http://127.0.0.1:{edge_port}/c",
        "CPS_KAFKA_BOOTSTRAP": kafka,
        "CPS_REDIS_URL": redis,
        "CPS_SPOOL_DIR": str((state / "spool").absolute()),
        "CPS_VERDICT_HEADER": "true",
        **_dev_keys(state),
    }
    # Anything the developer exported wins over the dev defaults.
    env.update({k: v for k, v in os.environ.items() if k.startswith("CPS_")})
    return env


def _wait_ready(port: int, edge: ManagedProcess, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not edge.alive:
            raise ServiceStartError(f"the edge exited during start-up:\n{edge.tail(30)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise ServiceStartError(f"the edge did not become ready in {timeout:.0f}s:\n{edge.tail(30)}")


def up(args: argparse.Namespace) -> int:
    state = STATE_DIR.absolute()
    (state / "logs").mkdir(parents=True, exist_ok=True)
    edge_port = _pick_port(args.port)

    def _interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    # SIGTERM unwinds like Ctrl-C: every `with` below stops what it started.
    signal.signal(signal.SIGTERM, _interrupt)
    print("starting Tansu broker and redis-server ...", flush=True)
    with LocalStack(state, topics={CLICKS_TOPIC: 4}, kafka_port=_pick_port(19092),
                    redis_port=_pick_port(16379)) as stack:
        os.environ.update(_dev_env(state, edge_port=edge_port, kafka=stack.broker.bootstrap,
                                   redis=stack.redis.url))
        try:
            settings = load_settings(EdgeSettings)
        except ConfigError as err:
            print(f"cps-dev: {err}", file=sys.stderr)
            return 2
        (state / "stack.json").write_bytes(orjson.dumps(
            {"kafka": stack.broker.bootstrap, "redis": stack.redis.url, "edge_port": edge_port}))
        edge = ManagedProcess(
            [sys.executable, "-m", "edge.cli", "serve", "--port", str(edge_port),
             "--workers", str(args.workers)],
            log_path=state / "logs" / "edge.log", env=dict(os.environ), name="edge")
        with edge.start(ready=lambda: port_accepts("127.0.0.1", edge_port), timeout=30):
            _wait_ready(edge_port, edge)
            link = mint_link(os.environ["CPS_LINK_BASE_URL"], ring=settings.link_keys,
                             promoter_id="demo-promoter", channel_id="live-demo",
                             target=DEMO_TARGET, ttl_seconds=7 * 86400, product_id="42",
                             allow=settings.allowed_target_hosts)
            print(f"""
edge        http://127.0.0.1:{edge_port}  (log: {edge.log_path})
kafka       {stack.broker.bootstrap}  (Tansu, memory storage)
redis       {stack.redis.url}  (AOF in {state / 'redis'})
metrics     http://127.0.0.1:{edge_port}/metrics

demo link (valid 7 days):
  {link}

try it (a browser User-Agent: curl's own is answered as a bot, without cookie):
  curl -i -A '{DEMO_USER_AGENT}' \\
      '{link}'
see the click land in Kafka:
  .venv/bin/cps-dev clicks
mint more links with the dev keys:
  eval "$(.venv/bin/cps-dev env)"; .venv/bin/cps-link mint --promoter p1 --channel c1 \\
      --target https://shop.example.com/item/7

Ctrl-C stops everything (the edge flushes its clicks first).""", flush=True)
            try:
                while edge.alive and stack.alive:
                    time.sleep(0.5)
            except KeyboardInterrupt:
                pass
            if not edge.alive:
                print(f"the edge exited:\n{edge.tail(30)}", file=sys.stderr)
                return 1
            print("stopping the edge (flushing clicks) ...", flush=True)
            edge.stop(timeout=30)
        print("stopping broker and redis ...", flush=True)
    return 0


def env_cmd(_: argparse.Namespace) -> int:
    state = STATE_DIR.absolute()
    info: dict[str, Any] = {"kafka": "127.0.0.1:19092", "redis": "redis://127.0.0.1:16379/0",
                            "edge_port": 8000}
    if (state / "stack.json").exists():
        info = orjson.loads((state / "stack.json").read_bytes())
    env = _dev_env(state, edge_port=info["edge_port"], kafka=info["kafka"], redis=info["redis"])
    for k, v in sorted(env.items()):
        print(f"export {k}='{v}'")
    return 0


def clicks(args: argparse.Namespace) -> int:
    path = STATE_DIR.absolute() / "stack.json"
    if not path.exists():
        print("cps-dev: no dev stack here (run ./run.sh first)", file=sys.stderr)
        return 2
    bootstrap = orjson.loads(path.read_bytes())["kafka"]
    seen: set[tuple[int, int]] = set()
    while True:
        try:
            records = asyncio.run(read_topic(bootstrap, CLICKS_TOPIC, timeout=10))
        except Exception as err:  # a CLI reports, it does not dump tracebacks
            print(f"cps-dev: cannot read {CLICKS_TOPIC} from {bootstrap}: {err}", file=sys.stderr)
            return 1
        fresh = [r for r in records if (r.partition, r.offset) not in seen]
        for r in sorted(fresh, key=lambda r: r.timestamp):
            seen.add((r.partition, r.offset))
            print((r.value or b"").decode(), flush=True)
        if not args.follow:
            return 0
        time.sleep(1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cps-dev", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    u = sub.add_parser("up", help="start broker, redis and the edge; print a demo link")
    u.add_argument("--port", type=int, default=8000, help="edge port (default 8000)")
    u.add_argument("--workers", type=int, default=1)
    sub.add_parser("env", help="print export lines for the dev keys and stack")
    c = sub.add_parser("clicks", help="print click events from the dev broker")
    c.add_argument("--follow", action="store_true")
    args = p.parse_args(argv)
    try:
        return {"up": up, "env": env_cmd, "clicks": clicks}[args.command](args)
    except ServiceStartError as err:
        print(f"cps-dev: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cps-dev: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
