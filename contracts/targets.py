"""Redirect targets: strict syntax and the host allow-list.

The edge only ever redirects to a target that (a) came inside a correctly
signed link and (b) passes ``AllowList.check``.  The syntax accepted here is
deliberately narrower than what browsers accept: every trick that makes a
browser and a parser disagree about the host (backslashes, userinfo,
scheme-relative ``//host``, percent-encoded or non-ASCII hosts, whitespace,
trailing dots) is refused rather than interpreted.  ``normalize_target``
turns a human-typed URL into that narrow form at mint time; for any ``str``
it returns a target ``parse_target`` accepts or raises ``TargetError``, never
another exception.

The edge appends its tracking parameters (``TRACKING_PARAMS``) to the target,
so a target must not already name one: the landing page's framework would
take the link author's value, which comes first.  Query names are compared
the way frameworks read them, not as written: percent-decoded ("+" as
space), split on "&" and ";", case-folded, and with the name mangling of PHP
and Rack (``cps.click.id``, ``cps_click_id[]``), so ``%63ps_click_id`` is
refused like ``cps_click_id``.  The comparison is the union of those
readings: it refuses a few names no framework would collide on rather than
miss one that some framework does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes, urlsplit, urlunsplit

MAX_TARGET_LEN = 2048
# The edge appends these to the target; a target already carrying them would
# hand the landing page two values, the first one chosen by the link's author.
TRACKING_PARAMS = ("cps_click_id", "cps_promoter", "cps_channel")

_DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
# Printable ASCII minus space and the characters that browsers and servers
# treat inconsistently inside URLs.
_URL_CHARS = re.compile(r'[!#$%&\'()*+,\-./0-9:;=?@A-Z\[\]_a-z~|{}^]*')
_ENTRY = re.compile(r"(\*\.)?([a-z0-9.-]+)(?::(\d{1,5}))?")
# WHATWG URL parsing turns a host whose last label is numeric (decimal, octal or
# 0x-hex) into an IPv4 address: "0x7f000001" is 127.0.0.1 to a browser.
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")
_TRACKING = frozenset(TRACKING_PARAMS)
_QUERY_SEPARATORS = re.compile(r"[&;]")
_BRACKET = re.compile(r"[\[\]]")
_PERCENT_U = re.compile(r"%[uU]([0-9a-fA-F]{4})")
# PHP turns " " and "." in a name into "_"; and "[" too when no "]" closes it.
_PHP_MANGLE = str.maketrans(" .", "__")
_PHP_MANGLE_OPEN_BRACKET = str.maketrans(" .[", "___")


class TargetError(ValueError):
    """A target URL that must not be redirected to; ``str(err)`` is the reason."""


@dataclass(frozen=True, slots=True)
class ParsedTarget:
    scheme: str
    host: str
    port: int | None


def parse_target(url: str) -> ParsedTarget:
    """Check the narrow syntax and return scheme, lowercased host and port."""
    if len(url) > MAX_TARGET_LEN:
        raise TargetError(f"target longer than {MAX_TARGET_LEN} characters")
    if not url.isascii() or not _URL_CHARS.fullmatch(url):
        raise TargetError("target has characters outside printable ASCII URL syntax")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _DEFAULT_PORTS:
        raise TargetError("target scheme must be http or https")
    end = len(rest)
    for ch in "/?#":
        i = rest.find(ch)
        if i != -1 and i < end:
            end = i
    authority = rest[:end]
    if "@" in authority:
        raise TargetError("target must not carry userinfo")
    host, colon, port_text = authority.partition(":")
    port: int | None = None
    if colon:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise TargetError("target port is invalid")
        port = int(port_text)
    host = host.lower()
    if not host:
        raise TargetError("target has no host")
    if host.endswith("."):
        raise TargetError("target host must not end with a dot")
    labels = host.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise TargetError("target host is not a plain DNS name")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        raise TargetError("target host must be a DNS name, not an IP address")
    # The query is what follows the first "?" up to the first "#", the stretch
    # the edge appends its parameters to; a "?" after the "#" is fragment text.
    query = rest[end:].partition("#")[0].partition("?")[2]
    for piece in _QUERY_SEPARATORS.split(query):
        # A bare "cps_click_id" (no "=") counts too: it reads as an empty first value.
        name = piece.partition("=")[0]
        # Without an escape a name is plain ASCII, and every reading of it keeps
        # the letters "cps" that start each tracking name: most names stop here.
        if "%" not in name and "+" not in name and "cps" not in name.lower():
            continue
        read_as = _tracking_param_read_as(name)
        if read_as is not None:
            raise TargetError(f"target query name {name[:40]!r} reads as {read_as!r}, "
                              "a tracking parameter the edge adds")
    return ParsedTarget(scheme, host, port)


def _tracking_param_read_as(raw: str) -> str | None:
    """The tracking parameter some framework files the raw query name ``raw`` under.

    The readings covered (their union, so a few harmless names are refused too):

    * every framework percent-decodes, "+" as space.  Bytes that are not UTF-8
      are dropped: that matches decoders that drop them, and anything a decoder
      that replaces them with U+FFFD could match (U+FFFD never matches);
    * ASP.NET also decodes ``%uXXXX`` (here after the ``%XX`` pass, which
      refuses a few double-encoded names too) and compares names
      case-insensitively (its invariant upper case maps U+017F to "S"):
      case-folded here;
    * PHP reads a name as a C string (NUL ends it), drops leading spaces, turns
      " " and "." into "_", files ``name[...]`` as an array under ``name`` and
      turns a "[" that no "]" closes into "_";
    * Rack, qs and PHP nest ``name[...]`` under ``name``; Rack 2 also drops
      leading brackets (``[cps_click_id]``).
    """
    name = raw
    if "%" in name or "+" in name:
        name = unquote_to_bytes(name.replace("+", " ")).decode("utf-8", "ignore")
        if "%" in name:
            name = _PERCENT_U.sub(lambda m: chr(int(m.group(1), 16)), name)
    name = name.partition("\x00")[0].casefold().lstrip(" []")
    for key in (_BRACKET.split(name, maxsplit=1)[0].translate(_PHP_MANGLE),
                name.translate(_PHP_MANGLE_OPEN_BRACKET)):
        if key in _TRACKING:
            return key
    return None


def normalize_target(url: str) -> str:
    """Turn a typed URL into the narrow form: IDNA host, lowercase, escaped path.

    Raises ``TargetError`` for what cannot be made safe (other schemes,
    userinfo, backslashes, ...): those are refused, not repaired.  It raises
    nothing else, whatever the string: ``cps-link mint`` reports the reason.
    """
    url = url.strip()
    if "\\" in url or any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise TargetError("target has a backslash, whitespace or control character")
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (say, a byte that is not UTF-8 read with
        # errors="surrogateescape") has no UTF-8 form to percent-encode.
        raise TargetError("target holds a lone surrogate: not valid Unicode text") from None
    try:
        parts = urlsplit(url)
    except ValueError:
        # urlsplit refuses unbalanced brackets and IP literals it cannot parse,
        # and hosts whose NFKC form holds a delimiter: a browser reads
        # "evil.example\uff0fx.shop.example.com" (fullwidth solidus) as host evil.example.
        raise TargetError("target host is not a plain DNS name (brackets, or characters "
                          "that normalize to URL delimiters)") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not url.lower().startswith(scheme + "://"):
        raise TargetError("target scheme must be http or https")
    if not parts.netloc:
        # "https:////evil.com" has no host; its path must not become one.
        raise TargetError("target has no host")
    if "@" in parts.netloc:
        raise TargetError("target must not carry userinfo")
    if "[" in parts.netloc or "]" in parts.netloc:
        # An IP literal; and hostname would turn "[v1.x]" (IPvFuture) into the DNS name v1.x.
        raise TargetError("target host must be a DNS name, not a bracketed IP literal")
    try:
        port = parts.port
    except ValueError:
        raise TargetError("target port is invalid") from None
    host = (parts.hostname or "").rstrip(".")
    try:
        host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise TargetError("target host is not a valid internationalized domain name") from None
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    safe = "/:@!$&'()*+,;=-._~%"
    normalized = urlunsplit((
        scheme,
        netloc,
        quote(parts.path, safe=safe) or "/",
        quote(parts.query, safe=safe + "?"),
        quote(parts.fragment, safe=safe + "?#"),
    ))
    parse_target(normalized)
    return normalized


@dataclass(frozen=True, slots=True)
class _Entry:
    host: str
    wildcard: bool
    port: int | None


class AllowList:
    """Hosts a link may redirect to: ``shop.example.com``, ``*.example.net``, ``localhost:8080``.

    ``*.example.net`` matches subdomains only, not ``example.net`` itself.
    An entry without a port admits only the scheme's default port.
    """

    def __init__(self, entries: list[str] | tuple[str, ...], *, allow_http: bool = False) -> None:
        parsed: list[_Entry] = []
        for raw in entries:
            text = raw.strip().lower()
            if not text:
                continue
            m = _ENTRY.fullmatch(text)
            if not m or not all(_LABEL.fullmatch(lb) for lb in m.group(2).split(".")):
                raise ValueError(f"allow-list entry {raw!r} is not HOST, *.HOST or HOST:PORT")
            if m.group(1) and "." not in m.group(2):
                raise ValueError(f"allow-list entry {raw!r} would admit a whole top-level domain")
            port = int(m.group(3)) if m.group(3) else None
            if port is not None and not 0 < port < 65536:
                raise ValueError(f"allow-list entry {raw!r} has a port outside 1-65535")
            parsed.append(_Entry(m.group(2), bool(m.group(1)), port))
        if not parsed:
            raise ValueError("the target allow-list is empty")
        self._entries = tuple(parsed)
        self.allow_http = allow_http

    @classmethod
    def parse(cls, text: str, *, allow_http: bool = False) -> AllowList:
        return cls(text.split(","), allow_http=allow_http)

    def __repr__(self) -> str:
        shown = [("*." if e.wildcard else "") + e.host + (f":{e.port}" if e.port else "")
                 for e in self._entries]
        return f"AllowList({shown!r}, allow_http={self.allow_http})"

    def check(self, url: str) -> ParsedTarget:
        """Parse ``url`` and raise ``TargetError`` unless its host is allowed."""
        target = parse_target(url)
        if target.scheme == "http" and not self.allow_http:
            raise TargetError("plain http targets are not allowed")
        for entry in self._entries:
            if entry.wildcard:
                host_ok = target.host.endswith("." + entry.host)
            else:
                host_ok = target.host == entry.host
            if not host_ok:
                continue
            port = target.port or _DEFAULT_PORTS[target.scheme]
            if port == (entry.port or _DEFAULT_PORTS[target.scheme]):
                return target
        raise TargetError(f"target host {target.host!r} is not on the allow-list")
