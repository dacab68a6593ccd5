"""``cps-dev``: the whole pipeline on one machine, for development.

    cps-dev up [--port 8000] [--workers 1]   broker + redis + edge + attribution service +
                                             charge service + funds stand-in, prints a
                                             demo link
    cps-dev env                              export lines for the dev keys (eval "$(cps-dev env)")
    cps-dev clicks [--follow]                print the click events in the dev broker
    cps-dev order --token COOKIE [--id ID]   send a demo order carrying a click's cookie
    cps-dev decisions [--follow]             print the attribution decisions
    cps-dev funds [--fail-orders A,B] [--flaky-orders C] [--fail-every N]
                  [--fail-ratio R --seed S]
                  [--delay-s D [--delay-orders A,B]]
                                             answer charge requests (the funds stand-in)

State (generated dev keys, Redis AOF, disk spool, the SQLite ledger, logs) lives
in ``.cps-dev/`` under the current directory.  The keys are development keys:
never deploy them.
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
from contracts.topics import (
    ATTRIBUTIONS_TOPIC,
    CHARGE_REQUESTS_TOPIC,
    CHARGE_RESULTS_TOPIC,
    CLICKS_TOPIC,
    ORDERS_TOPIC,
)
from devstack.kafka_admin import read_topic
from devstack.processes import ManagedProcess, ServiceStartError, free_port, port_accepts
from devstack.stack import LocalStack
from edge.settings import EdgeSettings

STATE_DIR = Path(".cps-dev")
DEMO_HOSTS = "shop.example.com,*.shop.example.com"
DEMO_SHOP = "demo-shop"
DEMO_PROMOTER = "demo-promoter"
DEMO_CHANNEL = "live-demo"
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
        "CPS_DATABASE_URL": f"sqlite:///{(state / 'ledger.db').absolute()}",
        # Demo pace: an order without a click is decided after 2 s and 10 s, not 30 min.
        "CPS_ATTRIBUTION_RETRY_SCHEDULE_S": "2,10",
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


def _demo_master_data(database_url: str) -> None:
    """The demo shop (in commission promotion), channel and promoter, and its commission
    terms (SPEC 9's example: 20 % of the shop's sales, platform 10 % of the pool, the
    channel 5 % of the paid amount); kept if present."""
    import ledger_db
    from billing_batch import master_data as billing
    from ledger_db import master_data

    ledger_db.migrate(database_url)
    engine = ledger_db.connect(database_url)
    now_ms = time.time_ns() // 1_000_000
    try:
        with engine.begin() as conn:
            known = {shop.shop_id for shop in master_data.list_shops(conn)}
            if DEMO_SHOP not in known:
                master_data.add_shop(conn, DEMO_SHOP, now_ms=now_ms, name="Demo shop")
                master_data.join_cps(conn, DEMO_SHOP, now_ms - 1000)
                master_data.add_channel(conn, DEMO_CHANNEL, now_ms=now_ms, name="Demo live")
                master_data.add_promoter(conn, DEMO_PROMOTER, now_ms=now_ms)
                billing.add_rate_rule(conn, level="shop_generic", shop_id=DEMO_SHOP,
                                      rate_bp=2000, valid_from_ms=now_ms - 1000, now_ms=now_ms)
                billing.add_fee_setting(conn, kind="platform_share", bp=1000,
                                        valid_from_ms=now_ms - 1000, now_ms=now_ms)
                billing.add_fee_setting(conn, kind="channel_fee", bp=500,
                                        channel_id=DEMO_CHANNEL, valid_from_ms=now_ms - 1000,
                                        now_ms=now_ms)
    finally:
        engine.dispose()


def _start_attribution(state: Path) -> ManagedProcess:
    port = _pick_port(8100)
    os.environ["CPS_HTTP_PORT"] = str(port)
    service = ManagedProcess([sys.executable, "-m", "attribution_worker.cli", "run"],
                             log_path=state / "logs" / "attribution.log", env=dict(os.environ),
                             name="attribution")
    return service.start(ready=lambda: port_accepts("127.0.0.1", port), timeout=60)


def _start_charges(state: Path) -> ManagedProcess:
    """The charge service (``cps-billing charges serve``): charge requests out, results in."""
    port = _pick_port(9466)
    env = {**os.environ, "CPS_CHARGE_METRICS_PORT": str(port)}
    service = ManagedProcess([sys.executable, "-m", "billing_batch.charge_service", "charges",
                              "serve"], log_path=state / "logs" / "charges.log", env=env,
                             name="charge service")
    return service.start(ready=lambda: port_accepts("127.0.0.1", port), timeout=60)


def _start_funds(state: Path, kafka: str) -> ManagedProcess:
    """The funds stand-in (``cps-dev funds``): charges every request."""
    log_path = state / "logs" / "funds.log"
    stand_in = ManagedProcess([sys.executable, "-m", "devstack.cli", "funds", "--kafka", kafka],
                              log_path=log_path, env=dict(os.environ), name="funds stand-in")
    return stand_in.start(ready=lambda: "answering charge requests" in log_path.read_text(),
                          timeout=60)


def up(args: argparse.Namespace) -> int:
    state = STATE_DIR.absolute()
    (state / "logs").mkdir(parents=True, exist_ok=True)
    edge_port = _pick_port(args.port)

    def _interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    # SIGTERM unwinds like Ctrl-C: every `with` below stops what it started.
    signal.signal(signal.SIGTERM, _interrupt)
    print("starting Tansu broker and redis-server ...", flush=True)
    topics = {CLICKS_TOPIC: 4, ORDERS_TOPIC: 4, ATTRIBUTIONS_TOPIC: 4,
              CHARGE_REQUESTS_TOPIC: 4, CHARGE_RESULTS_TOPIC: 4}
    with LocalStack(state, topics=topics, kafka_port=_pick_port(19092),
                    redis_port=_pick_port(16379)) as stack:
        os.environ.update(_dev_env(state, edge_port=edge_port, kafka=stack.broker.bootstrap,
                                   redis=stack.redis.url))
        try:
            settings = load_settings(EdgeSettings)
        except ConfigError as err:
            print(f"cps-dev: {err}", file=sys.stderr)
            return 2
        _demo_master_data(os.environ["CPS_DATABASE_URL"])
        (state / "stack.json").write_bytes(orjson.dumps(
            {"kafka": stack.broker.bootstrap, "redis": stack.redis.url, "edge_port": edge_port}))
        edge = ManagedProcess(
            [sys.executable, "-m", "edge.cli", "serve", "--port", str(edge_port),
             "--workers", str(args.workers)],
            log_path=state / "logs" / "edge.log", env=dict(os.environ), name="edge")
        print("starting the edge, the attribution service, the charge service and the funds "
              "stand-in ...", flush=True)
        with edge.start(ready=lambda: port_accepts("127.0.0.1", edge_port), timeout=30), \
                _start_attribution(state) as attribution, _start_charges(state) as charges, \
                _start_funds(state, stack.broker.bootstrap) as funds_stand_in:
            _wait_ready(edge_port, edge)
            link = mint_link(os.environ["CPS_LINK_BASE_URL"], ring=settings.link_keys,
                             promoter_id=DEMO_PROMOTER, channel_id=DEMO_CHANNEL,
                             target=DEMO_TARGET, ttl_seconds=7 * 86400, shop_id=DEMO_SHOP,
                             product_id="42", allow=settings.allowed_target_hosts)
            _print_demo(state, edge, attribution, stack, edge_port, link)
            running = (edge, attribution, charges, funds_stand_in)
            try:
                while all(p.alive for p in running) and stack.alive:
                    time.sleep(0.5)
            except KeyboardInterrupt:
                pass
            for process in running:
                if not process.alive:
                    print(f"the {process.name} exited:\n{process.tail(30)}", file=sys.stderr)
                    return 1
            print("stopping the edge (flushing clicks), the attribution and charge services "
                  "and the funds stand-in ...", flush=True)
            edge.stop(timeout=30)
            for process in (attribution, charges, funds_stand_in):
                process.stop(timeout=30)
        print("stopping broker and redis ...", flush=True)
    return 0


def _print_demo(state: Path, edge: ManagedProcess, attribution: ManagedProcess,
                stack: LocalStack, edge_port: int, link: str) -> None:
    print(f"""
edge         http://127.0.0.1:{edge_port}  (log: {edge.log_path})
attribution  http://127.0.0.1:{os.environ['CPS_HTTP_PORT']}/metrics  (log: {attribution.log_path})
ledger       {os.environ['CPS_DATABASE_URL']}
kafka        {stack.broker.bootstrap}  (Tansu, memory storage)
redis        {stack.redis.url}  (AOF in {state / 'redis'})
metrics      http://127.0.0.1:{edge_port}/metrics

demo link (valid 7 days; promoter {DEMO_PROMOTER}, shop {DEMO_SHOP}):
  {link}

1. click it as a buyer would (a browser User-Agent: curl's own is answered as a bot):
  curl -si -A '{DEMO_USER_AGENT}' \\
      '{link}' | grep -i '^set-cookie'
2. see the click land in Kafka:
  .venv/bin/cps-dev clicks
3. order in the shop, carrying the cookie as the trade system would (the value after cps_attr=):
  .venv/bin/cps-dev order --token 'dev1.…'
4. see the decision, and why:
  .venv/bin/cps-dev decisions
  eval "$(.venv/bin/cps-dev env)"; .venv/bin/cps-attribution explain demo-order-1
5. bill it (commission frozen, the merchant charged by the funds stand-in), then look:
  eval "$(.venv/bin/cps-dev env)"; .venv/bin/cps-billing run --as-of "$(date -u +%FT%T)"
  .venv/bin/cps-billing charges list; .venv/bin/cps-billing reconcile
mint more links with the dev keys:
  eval "$(.venv/bin/cps-dev env)"; .venv/bin/cps-link mint --promoter p1 --channel c1 \\
      --target https://shop.example.com/item/7

Ctrl-C stops everything (the edge flushes its clicks first).""", flush=True)


def _stack_info() -> dict[str, Any] | None:
    path = STATE_DIR.absolute() / "stack.json"
    if not path.exists():
        print("cps-dev: no dev stack here (run ./run.sh first)", file=sys.stderr)
        return None
    info: dict[str, Any] = orjson.loads(path.read_bytes())
    return info


def order(args: argparse.Namespace) -> int:
    """One demo order message in the demo shop, as the trade system would send it."""
    info = _stack_info()
    if info is None:
        return 2
    now_ms = time.time_ns() // 1_000_000
    body = {"version": 1, "order_id": args.id, "shop_id": DEMO_SHOP,
            "buyer_key": args.buyer, "buyer_account": None, "created_at": now_ms,
            "status": "paid", "event_ts": now_ms, "paid_at": now_ms, "received_at": None,
            "final_at": None, "channel_id": None, "fanstype": None,
            "attribution_token": args.token,
            "items": [{"item_id": "1", "product_id": "42", "category_id": "demo",
                       "quantity": 1, "paid_amount": args.amount}], "refunds": []}
    try:
        asyncio.run(_send(info["kafka"], ORDERS_TOPIC, args.id.encode(), orjson.dumps(body)))
    except Exception as err:  # a CLI reports, it does not dump tracebacks
        print(f"cps-dev: cannot send the order to {info['kafka']}: {err}", file=sys.stderr)
        return 1
    print(f"order {args.id} sent to {ORDERS_TOPIC}", flush=True)
    return 0


async def _send(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=False, request_timeout_ms=10_000)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


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
    return _print_topic(CLICKS_TOPIC, follow=args.follow)


def decisions(args: argparse.Namespace) -> int:
    return _print_topic(ATTRIBUTIONS_TOPIC, follow=args.follow)


def _print_topic(topic: str, *, follow: bool) -> int:
    info = _stack_info()
    if info is None:
        return 2
    bootstrap = info["kafka"]
    seen: set[tuple[int, int]] = set()
    while True:
        try:
            records = asyncio.run(read_topic(bootstrap, topic, timeout=10))
        except Exception as err:  # a CLI reports, it does not dump tracebacks
            print(f"cps-dev: cannot read {topic} from {bootstrap}: {err}", file=sys.stderr)
            return 1
        fresh = [r for r in records if (r.partition, r.offset) not in seen]
        for r in sorted(fresh, key=lambda r: r.timestamp):
            seen.add((r.partition, r.offset))
            print((r.value or b"").decode(), flush=True)
        if not follow:
            return 0
        time.sleep(1)


def funds(args: argparse.Namespace) -> int:
    """The funds stand-in on the dev broker, printing each answer, until Ctrl-C."""
    from devstack.funds import FailurePlan, FundsStandIn

    info = {"kafka": args.kafka} if args.kafka else _stack_info()
    if info is None:
        return 2
    try:
        plan = FailurePlan(orders=frozenset(_names(args.fail_orders)),
                           attempts=args.fail_attempts,
                           flaky=frozenset(_names(args.flaky_orders)), every=args.fail_every,
                           ratio=args.fail_ratio, seed=args.seed)
    except ValueError as err:
        print(f"cps-dev funds: {err}", file=sys.stderr)
        return 2

    def show(result: Any) -> None:
        print(f"{result.charge_id}: {result.status.value} {result.reason}".rstrip(), flush=True)

    async def serve() -> None:
        stand_in = FundsStandIn(info["kafka"], plan=plan, delay_s=args.delay_s,
                                delay_orders=_names(args.delay_orders) or None,
                                on_answer=show)
        await stand_in.start()
        try:
            await asyncio.Event().wait()
        finally:
            await stand_in.stop()

    print(f"funds stand-in answering charge requests on {info['kafka']} (Ctrl-C stops)",
          flush=True)
    asyncio.run(serve())
    return 0


def _names(text: str | None) -> list[str]:
    return [name.strip() for name in (text or "").split(",") if name.strip()]


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
    o = sub.add_parser("order", help="send a demo order carrying a click's cookie")
    o.add_argument("--token", help="the cps_attr cookie value (the attribution token)")
    o.add_argument("--buyer", help="the buyer's visitor id, instead of or with the token")
    o.add_argument("--id", default="demo-order-1", help="order id (default demo-order-1)")
    o.add_argument("--amount", type=int, default=9900, help="paid amount, minor units")
    d = sub.add_parser("decisions", help="print attribution decisions from the dev broker")
    d.add_argument("--follow", action="store_true")
    f = sub.add_parser("funds", help="answer charge requests (the funds stand-in)")
    f.add_argument("--kafka", help="bootstrap servers (default: the dev stack's)")
    f.add_argument("--fail-orders", help="comma-separated order ids whose charges fail")
    f.add_argument("--fail-attempts", type=int, default=None,
                   help="those orders fail only their first N attempts (default: all)")
    f.add_argument("--flaky-orders", help="these orders' first attempt fails, the retry is "
                   "charged (comma-separated)")
    f.add_argument("--fail-every", type=int, default=0, help="every Nth request fails")
    f.add_argument("--fail-ratio", type=float, default=0.0,
                   help="this share of requests fails (0..1), chosen by --seed")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--delay-s", type=float, default=0.0, help="answer after this many seconds")
    f.add_argument("--delay-orders", help="delay only these orders' answers (comma-separated)")
    args = p.parse_args(argv)
    try:
        return {"up": up, "env": env_cmd, "clicks": clicks, "order": order,
                "decisions": decisions, "funds": funds}[args.command](args)
    except ServiceStartError as err:
        print(f"cps-dev: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cps-dev: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
