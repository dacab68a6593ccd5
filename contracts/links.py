"""Signed promotion links: the one canonical form, minting and verification.

Canonical form (version 1).  The query string of a link is

    p=P&ch=C[&pos=POS][&shop=S][&prod=PR][&sub1=..]..[&sub5=..]&t=TARGET&exp=EXP&kid=KID&sig=SIG

* parameters appear in exactly that order; optional ones are omitted when absent;
* every value is UTF-8, percent-encoded except the RFC 3986 unreserved
  characters ``A-Z a-z 0-9 - . _ ~``, hex digits uppercase;
* ``exp`` is the expiry in Unix seconds (decimal, no sign, no leading zeros):
  the link is expired from that second on;
* ``sig`` is the lowercase hex HMAC-SHA256, under the key named by ``kid``,
  of ``b"cps-link-v1\\n"`` followed by the exact bytes of the query before
  ``&sig=``.

The edge and scheme/host/path of the link are not signed: the same link
works through any edge host.  Verification first tries the raw bytes (the
link as minted: no decoding needed); if an intermediary re-encoded the query,
it decodes strictly, re-encodes canonically and verifies that.
"""

from __future__ import annotations

import hmac
import re
import time
import unicodedata
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes, urlsplit

from contracts.keys import KeyRing
from contracts.targets import AllowList, TargetError, normalize_target, parse_target
from contracts.verdicts import Verdict

SIGNATURE_TAG = b"cps-link-v1\n"
MAX_QUERY_BYTES = 4096
MAX_SUB_IDS = 5
MAX_SUB_ID_CHARS = 100
SIG_HEX_LEN = 64

ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_EXP_PATTERN = re.compile(rb"[1-9][0-9]{0,11}")
_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_HEX = re.compile(rb"[0-9a-fA-F]{64}")
# A minted link is pasted into posts and HTML as is: its base URL is printable
# ASCII without spaces or backslashes (an IDN edge host goes in as punycode).
_BASE_URL_CHARS = re.compile(r"[!#$%&'()*+,\-./0-9:;=?@A-Z\[\]_a-z~]+")

_ID_FIELDS = (("p", "promoter_id"), ("ch", "channel_id"), ("pos", "position_id"),
              ("shop", "shop_id"), ("prod", "product_id"))
_SUB_NAMES = tuple(f"sub{i}" for i in range(1, MAX_SUB_IDS + 1))
_KNOWN = frozenset(["p", "ch", "pos", "shop", "prod", *_SUB_NAMES, "t", "exp", "kid", "sig"])
_REQUIRED = ("p", "ch", "t", "exp", "kid", "sig")


# One verdict enum for links and click events (``contracts.clicks.Verdict``):
# verification answers valid, expired, bad_signature, unknown_key,
# target_not_allowed or malformed; the edge adds the request-level ones.
LinkVerdict = Verdict


class LinkError(ValueError):
    """Raised when minting from invalid inputs; ``str(err)`` says which one."""


@dataclass(frozen=True, slots=True)
class Link:
    """What a link says: who promotes what, where it goes and until when."""

    promoter_id: str
    channel_id: str
    target: str
    expires_at: int
    position_id: str | None = None
    shop_id: str | None = None
    product_id: str | None = None
    # sub1..sub5 by position; "" marks an unused slot before a used one.
    sub_ids: tuple[str, ...] = ()

    def is_expired(self, now: float) -> bool:
        return now >= self.expires_at


@dataclass(frozen=True, slots=True)
class LinkCheck:
    """The verdict on a link; ``link``/``kid``/``sig`` are set once the signature held."""

    verdict: LinkVerdict
    reason: str
    link: Link | None = None
    kid: str | None = None
    sig: str | None = None


def _enc(value: str) -> str:
    return quote(value, safe="-._~")


def canonical_query(link: Link, kid: str) -> str:
    """The exact text that is signed (everything before ``&sig=``)."""
    parts = [f"p={_enc(link.promoter_id)}", f"ch={_enc(link.channel_id)}"]
    if link.position_id is not None:
        parts.append(f"pos={_enc(link.position_id)}")
    if link.shop_id is not None:
        parts.append(f"shop={_enc(link.shop_id)}")
    if link.product_id is not None:
        parts.append(f"prod={_enc(link.product_id)}")
    for name, value in zip(_SUB_NAMES, link.sub_ids, strict=False):
        if value:
            parts.append(f"{name}={_enc(value)}")
    parts += [f"t={_enc(link.target)}", f"exp={link.expires_at}", f"kid={_enc(kid)}"]
    return "&".join(parts)


def signature(secret: bytes, signed_part: bytes) -> bytes:
    return hmac.digest(secret, SIGNATURE_TAG + signed_part, "sha256")


def _check_fields(link: Link) -> None:
    for _, attr in _ID_FIELDS:
        value = getattr(link, attr)
        if value is None and attr in ("position_id", "shop_id", "product_id"):
            continue
        if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
            raise LinkError(f"{attr} must match {ID_PATTERN.pattern}")
    if len(link.sub_ids) > MAX_SUB_IDS:
        raise LinkError(f"at most {MAX_SUB_IDS} sub-ids")
    if link.sub_ids and not link.sub_ids[-1]:
        raise LinkError("the last sub-id must not be empty")
    for value in link.sub_ids:
        if len(value) > MAX_SUB_ID_CHARS or _has_unprintable(value):
            raise LinkError(f"sub-ids are at most {MAX_SUB_ID_CHARS} printable characters")
    if not isinstance(link.expires_at, int) or not 0 < link.expires_at < 10**12:
        raise LinkError("expires_at must be a positive Unix time in seconds")


def sign_query(link: Link, ring: KeyRing) -> str:
    """The full signed query string for ``link`` under the ring's active key."""
    _check_fields(link)
    parse_target(link.target)
    signed = canonical_query(link, ring.active_kid)
    sig = signature(ring.active_secret, signed.encode("ascii")).hex()
    return f"{signed}&sig={sig}"


def mint_link(base_url: str, *, ring: KeyRing, promoter_id: str, channel_id: str,
              target: str, ttl_seconds: int | None = None, expires_at: int | None = None,
              position_id: str | None = None, shop_id: str | None = None,
              product_id: str | None = None, sub_ids: tuple[str, ...] = (),
              allow: AllowList | None = None, now: float | None = None) -> str:
    """Mint a signed link.  The only sanctioned way to build one.

    ``target`` is normalized (IDNA host, escaped path) and, when ``allow`` is
    given, must be on it: minting a link the edge would refuse helps nobody.
    Bad inputs, however hostile, raise ``LinkError`` with the reason and
    nothing else; a link it returns verifies as valid.
    """
    shape = "base URL must be http(s)://HOST[:PORT]/PATH without query or fragment"
    if not _BASE_URL_CHARS.fullmatch(base_url) or "?" in base_url or "#" in base_url:
        raise LinkError(shape + ", in printable ASCII without spaces or backslashes "
                        "(an IDN host as punycode)")
    try:
        split = urlsplit(base_url)
        port = split.port
    except ValueError:
        # Unbalanced brackets, a bad IPv6 literal, a port that is no number.
        raise LinkError(shape) from None
    if split.scheme not in ("http", "https") or not split.hostname or port == 0 \
            or "@" in split.netloc:
        raise LinkError(shape)
    try:
        target = normalize_target(target)
        if allow is not None:
            allow.check(target)
    except TargetError as err:
        raise LinkError(str(err)) from None
    if expires_at is None:
        if ttl_seconds is None or ttl_seconds <= 0:
            raise LinkError("give a positive ttl_seconds or an expires_at")
        expires_at = int(time.time() if now is None else now) + ttl_seconds
    link = Link(promoter_id=promoter_id, channel_id=channel_id, target=target,
                expires_at=expires_at, position_id=position_id, shop_id=shop_id,
                product_id=product_id, sub_ids=tuple(sub_ids))
    query = sign_query(link, ring)
    if len(query) > MAX_QUERY_BYTES:
        raise LinkError(f"the link's query would exceed {MAX_QUERY_BYTES} bytes: "
                        "shorten the target or sub-ids")
    return f"{base_url}?{query}"


class _Malformed(Exception):
    pass


# Control, format (bidi overrides, zero-width, BOM), surrogate and line/paragraph
# separator characters: invisible or misleading in reports and logs.
_UNPRINTABLE = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))


def _has_unprintable(value: str) -> bool:
    if value.isascii():
        return any(c < " " or c == "\x7f" for c in value)
    return any(unicodedata.category(c) in _UNPRINTABLE for c in value)


def _decode_value(raw: bytes) -> str:
    if _BAD_PERCENT.search(raw):
        raise _Malformed("invalid percent-encoding")
    try:
        value = unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        raise _Malformed("parameter is not valid UTF-8") from None
    if not value:
        raise _Malformed("parameter has an empty value")
    if _has_unprintable(value):
        raise _Malformed("parameter holds control or invisible characters")
    return value


def _parse_params(query: bytes) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in query.split(b"&"):
        name_b, eq, raw = pair.partition(b"=")
        name = name_b.decode("ascii", "replace")
        if not eq or name not in _KNOWN:
            raise _Malformed(f"unknown parameter {name[:20]!r}" if eq else "parameter without '='")
        if name in params:
            raise _Malformed(f"parameter {name!r} appears twice")
        params[name] = _decode_value(raw)
    missing = [n for n in _REQUIRED if n not in params]
    if missing:
        raise _Malformed(f"missing parameter {missing[0]!r}")
    return params


def _link_from_params(params: dict[str, str]) -> Link:
    values: dict[str, str | None] = {}
    for name, attr in _ID_FIELDS:
        value = params.get(name)
        if value is not None and not ID_PATTERN.fullmatch(value):
            raise _Malformed(f"parameter {name!r} is not a valid id")
        values[attr] = value
    if not _EXP_PATTERN.fullmatch(params["exp"].encode()):
        raise _Malformed("parameter 'exp' is not a Unix time")
    subs = [params.get(n, "") for n in _SUB_NAMES]
    while subs and not subs[-1]:
        subs.pop()
    if any(len(s) > MAX_SUB_ID_CHARS for s in subs):
        raise _Malformed("sub-id too long")
    return Link(promoter_id=values["promoter_id"] or "", channel_id=values["channel_id"] or "",
                target=params["t"], expires_at=int(params["exp"]),
                position_id=values["position_id"], shop_id=values["shop_id"],
                product_id=values["product_id"], sub_ids=tuple(subs))


def verify_query(query: bytes, ring: KeyRing, allow: AllowList) -> LinkCheck:
    """Verify a raw query string.  Time-independent: see ``Link.is_expired``.

    Never raises on any input; every refusal is a verdict with a reason.
    """
    if len(query) > MAX_QUERY_BYTES:
        return LinkCheck(LinkVerdict.MALFORMED, f"query longer than {MAX_QUERY_BYTES} bytes")
    if not query:
        return LinkCheck(LinkVerdict.MALFORMED, "no link parameters")
    if not query.isascii():
        return LinkCheck(LinkVerdict.MALFORMED, "query holds raw non-ASCII bytes")
    # Fast path: the link exactly as minted.
    if query[-69:-64] == b"&sig=" and _HEX.fullmatch(query, len(query) - 64):
        signed = query[:-69]
        kid_at = signed.rfind(b"&kid=")
        kid = signed[kid_at + 5:].decode("ascii") if kid_at != -1 else ""
        secret = ring.get(kid)
        if secret is not None and hmac.compare_digest(
                signature(secret, signed), bytes.fromhex(query[-64:].decode("ascii"))):
            try:
                link = _link_from_params(_parse_params(query))
            except _Malformed as err:
                return LinkCheck(LinkVerdict.MALFORMED, str(err))
            return _check_target(link, kid, query[-64:].decode("ascii").lower(), allow)
    return _verify_slow(query, ring, allow)


def _verify_slow(query: bytes, ring: KeyRing, allow: AllowList) -> LinkCheck:
    try:
        params = _parse_params(query)
        sig = params["sig"]
        if not _HEX.fullmatch(sig.encode()):
            raise _Malformed("parameter 'sig' is not 64 hex digits")
        link = _link_from_params(params)
    except _Malformed as err:
        return LinkCheck(LinkVerdict.MALFORMED, str(err))
    kid = params["kid"]
    secret = ring.get(kid)
    if secret is None:
        return LinkCheck(LinkVerdict.UNKNOWN_KEY, f"no active key with id {kid[:20]!r}")
    signed = canonical_query(link, kid).encode("ascii")
    if not hmac.compare_digest(signature(secret, signed), bytes.fromhex(sig)):
        return LinkCheck(LinkVerdict.BAD_SIGNATURE, "signature does not match")
    return _check_target(link, kid, sig.lower(), allow)


def _check_target(link: Link, kid: str, sig: str, allow: AllowList) -> LinkCheck:
    try:
        allow.check(link.target)
    except TargetError as err:
        return LinkCheck(LinkVerdict.TARGET_NOT_ALLOWED, str(err), link, kid, sig)
    return LinkCheck(LinkVerdict.VALID, "ok", link, kid, sig)


def inspect_link(url: str, ring: KeyRing, allow: AllowList, now: float | None = None) -> LinkCheck:
    """Verify a whole link URL, expiry included (what ``cps-link inspect`` reports)."""
    query = url.partition("?")[2].partition("#")[0]
    try:
        raw = query.encode("ascii")
    except UnicodeEncodeError:
        return LinkCheck(LinkVerdict.MALFORMED, "link holds raw non-ASCII characters")
    check = verify_query(raw, ring, allow)
    if check.verdict is LinkVerdict.VALID and check.link is not None and check.link.is_expired(
            time.time() if now is None else now):
        return LinkCheck(LinkVerdict.EXPIRED, "link expired", check.link, check.kid, check.sig)
    return check
