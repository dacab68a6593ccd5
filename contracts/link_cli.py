"""``cps-link``: mint and inspect signed promotion links, and generate keys.

    cps-link mint --promoter P --channel C --target URL [--ttl SECONDS] [...]
    cps-link inspect URL [--json]
    cps-link keygen [--kid K] [--cookie]

Keys come from ``CPS_LINK_KEYS`` (or ``CPS_LINK_KEYS_FILE``); the target
allow-list from ``CPS_ALLOWED_TARGET_HOSTS``.  Exit status: 0 ok, 1 the
link is not valid (inspect), 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import sys
import time

import orjson
from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.keys import KeyConfigError, generate_ring
from contracts.links import LinkError, LinkVerdict, inspect_link, mint_link
from contracts.settings import AllowedHosts, ConfigError, LinkKeys, load_settings

DEFAULT_BASE_URL = "http://127.0.0.1:8000/c"


class LinkToolSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CPS_", extra="ignore",
                                      arbitrary_types_allowed=True)

    link_keys: LinkKeys
    allowed_target_hosts: AllowedHosts
    allow_http_targets: bool = False
    link_base_url: str = DEFAULT_BASE_URL

    @model_validator(mode="after")
    def _http_policy(self) -> LinkToolSettings:
        self.allowed_target_hosts.allow_http = self.allow_http_targets
        return self


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cps-link", description="Mint and inspect promotion links.")
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("mint", help="print a signed link")
    m.add_argument("--promoter", required=True, help="promoter id")
    m.add_argument("--channel", required=True, help="channel id")
    m.add_argument("--target", required=True, help="landing page URL (must be allow-listed)")
    m.add_argument("--ttl", type=int, default=30 * 86400, help="seconds until expiry (30 days)")
    m.add_argument("--expires-at", type=int, help="absolute expiry, Unix seconds (beats --ttl)")
    m.add_argument("--position", help="position (placement) id")
    m.add_argument("--shop", help="shop id")
    m.add_argument("--product", help="product id")
    m.add_argument("--sub", action="append", default=[], metavar="VALUE",
                   help="free sub-id, repeat for sub1..sub5 ('' skips a slot)")
    m.add_argument("--base-url", help="edge redirect URL (default $CPS_LINK_BASE_URL)")
    i = sub.add_parser("inspect", help="say whether a link is valid and why not")
    i.add_argument("url")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    k = sub.add_parser("keygen", help="print a fresh key ring line for CPS_LINK_KEYS/COOKIE_KEYS")
    k.add_argument("--kid", default="k1")
    k.add_argument("--cookie", action="store_true", help="an AES-256 cookie key")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "keygen":
        try:
            print(generate_ring((args.kid,), 32).to_text())
        except KeyConfigError as err:
            print(f"cps-link: {err}", file=sys.stderr)
            return 2
        return 0
    try:
        s = load_settings(LinkToolSettings)
    except ConfigError as err:
        print(f"cps-link: {err}", file=sys.stderr)
        return 2
    if args.command == "mint":
        try:
            print(mint_link(args.base_url or s.link_base_url, ring=s.link_keys,
                            promoter_id=args.promoter, channel_id=args.channel,
                            target=args.target, ttl_seconds=args.ttl, expires_at=args.expires_at,
                            position_id=args.position, shop_id=args.shop,
                            product_id=args.product, sub_ids=tuple(args.sub),
                            allow=s.allowed_target_hosts))
        except LinkError as err:
            print(f"cps-link: cannot mint: {err}", file=sys.stderr)
            return 2
        return 0
    check = inspect_link(args.url, s.link_keys, s.allowed_target_hosts, time.time())
    link = check.link
    if args.json:
        doc = {"verdict": check.verdict.value, "reason": check.reason, "kid": check.kid,
               "link": None if link is None else {
                   "promoter_id": link.promoter_id, "channel_id": link.channel_id,
                   "target": link.target, "expires_at": link.expires_at,
                   "position_id": link.position_id, "shop_id": link.shop_id,
                   "product_id": link.product_id, "sub_ids": list(link.sub_ids)}}
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        print(f"verdict: {check.verdict.value} ({check.reason})")
        if link is not None:
            expires = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(link.expires_at))
            print(f"promoter: {link.promoter_id}\nchannel:  {link.channel_id}\n"
                  f"target:   {link.target}\nkey id:   {check.kid}\nexpires:  {expires}")
            for label, value in (("position", link.position_id), ("shop", link.shop_id),
                                 ("product", link.product_id)):
                if value is not None:
                    print(f"{label + ':':9s} {value}")
            if link.sub_ids:
                print(f"sub-ids:  {list(link.sub_ids)}")
    return 0 if check.verdict is LinkVerdict.VALID else 1


if __name__ == "__main__":
    sys.exit(main())
