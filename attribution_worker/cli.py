"""``cps-attribution``: run the attribution service, or explain one order's attribution.

    cps-attribution run                      # persister + order sync + attributor + outbox
    cps-attribution run --role ingest        # persister + order sync only
    cps-attribution run --role attribute     # attributor + outbox only (one GIL each)
    cps-attribution explain ORDER_ID [--json]

``explain`` shows what support needs: the decision on record (if any), and what
the rules see now: every candidate considered (store clicks, the token,
fanstype), accepted or rejected and why, and the rule that decides.  Settings
come from ``CPS_*`` variables (README, "Attribution settings"); a bad one stops
the command with a message naming it (exit 2).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

import orjson
import uvloop

from attribution_worker import pending
from attribution_worker.attributor import Attributor
from attribution_worker.service import Role, Service, open_store, policy_of
from attribution_worker.settings import AttributionSettings
from contracts.cookie import CookieSealer
from contracts.settings import ConfigError, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cps-attribution", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the attribution service until SIGTERM")
    run.add_argument("--role", choices=[r.value for r in Role], default=Role.ALL.value,
                     help="the parts this process runs: all (default), ingest (click "
                     "persister, order sync) or attribute (attributor, outbox publisher)")
    explain = sub.add_parser("explain", help="why an order is (or would be) attributed so")
    explain.add_argument("order_id")
    explain.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(AttributionSettings)
    except ConfigError as err:
        print(f"cps-attribution: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "run":
        return uvloop.run(Service(settings, Role(args.role)).run())
    return asyncio.run(_explain(settings, args.order_id, as_json=args.json))


async def _explain(settings: AttributionSettings, order_id: str, *, as_json: bool) -> int:
    service = Service(settings)
    store = await open_store(settings)
    try:
        attributor = Attributor(service.engine, store, CookieSealer(settings.cookie_keys),
                                policy_of(settings),
                                schedule_s=settings.attribution_retry_schedule_s)
        decision = await asyncio.to_thread(pending.decision_of, service.engine, order_id)
        explanation = await attributor.explain(order_id)
    finally:
        await store.close()
        service.engine.dispose()
    if explanation is None:
        print(f"cps-attribution: no order {order_id!r} in the ledger (or its shop is unknown)",
              file=sys.stderr)
        return 1
    if as_json:
        out: dict[str, Any] = {"decision": decision, "now": explanation.to_dict()}
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS,
                          default=str).decode())
        return 0
    if decision is None:
        print(f"order {order_id}: not decided yet (delayed attribution); the final look "
              "would see:")
    else:
        print(f"order {order_id}: decided {decision['attribution_type']} at attempt "
              f"{decision['attempts']}: {decision['reason']}")
        print("what the rules see now (clicks may have expired from the store since):")
    print(explanation.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
