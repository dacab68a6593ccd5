"""Webhook endpoints and their signing secrets: add, list, disable, enable, rotate.

An endpoint belongs to a promoter or a channel and has a URL: ``https://`` always,
``http://127.0.0.1`` / ``http://localhost`` only with ``allow_http_localhost`` (the
``--dev`` flag or ``CPS_PUSH_ALLOW_HTTP_LOCALHOST``, for tests and demos).  Its secrets
follow Standard Webhooks: ``"whsec_" + base64(32 random bytes)`` (at least 24 are
required), shown once when created and never logged.  Several are active at once:
``rotate_secret`` adds a new one and gives the others ``expires_at = now + grace``
(default 24 h), during which every delivery carries one signature per active secret,
so the owner can switch its verifier without dropping a push.

At rest a secret is sealed with AES-256-GCM under the ring ``CPS_PUSH_SECRET_KEYS``
(``KID:BASE64[,...]``, 16/24/32-byte keys, the first seals, all unseal, like the cookie
keys): ``kid || "." || nonce[12] || ciphertext || tag``, the associated data binding it
to its endpoint and secret id, so a sealed value moved to another row does not open.
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import sqlalchemy
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection

from contracts.keys import KeyRing
from ledger_db import schema

SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks prefix, not a secret
SECRET_BYTES = 32
MIN_SECRET_BYTES = 24
DEFAULT_GRACE_MS = 86_400_000
OWNER_KINDS = ("promoter", "channel")
_AAD = b"cps-whsec-v1|"
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class EndpointError(ValueError):
    """A request the endpoint rules refuse; the message is meant for the operator."""


class Sealer(Protocol):
    def seal(self, secret: bytes, aad: bytes) -> bytes: ...

    def unseal(self, sealed: bytes, aad: bytes) -> bytes: ...


class SecretSealer:
    """AES-GCM under a key ring: seals with the active key, unseals with any."""

    def __init__(self, ring: KeyRing) -> None:
        for kid in ring:
            if len(ring[kid]) not in (16, 24, 32):
                raise ValueError(f"push secret key {kid!r} must be 16, 24 or 32 bytes")
        self._ciphers = {kid: AESGCM(ring[kid]) for kid in ring}
        self._active = ring.active_kid

    def seal(self, secret: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        kid = self._active
        return (kid.encode() + b"." + nonce
                + self._ciphers[kid].encrypt(nonce, secret, _AAD + aad))

    def unseal(self, sealed: bytes, aad: bytes) -> bytes:
        kid, _, body = bytes(sealed).partition(b".")
        cipher = self._ciphers.get(kid.decode("ascii", "replace"))
        if cipher is None or len(body) < 12 + 16:
            raise EndpointError("a webhook secret is sealed under a key not in "
                                "CPS_PUSH_SECRET_KEYS")
        try:
            return cipher.decrypt(body[:12], body[12:], _AAD + aad)
        except InvalidTag:
            raise EndpointError("a webhook secret does not open with CPS_PUSH_SECRET_KEYS "
                                "(wrong key, or the row was tampered with)") from None


@dataclass(frozen=True, slots=True)
class Endpoint:
    endpoint_id: str
    owner_kind: str
    owner_id: str
    url: str
    status: str
    disabled_reason: str | None
    failing_since_ms: int | None
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class NewSecret:
    endpoint_id: str
    secret_id: str
    secret: str  # "whsec_...": shown once


def new_secret_text(size: int = SECRET_BYTES) -> tuple[str, bytes]:
    if size < MIN_SECRET_BYTES:
        raise EndpointError(f"a secret needs at least {MIN_SECRET_BYTES} random bytes")
    raw = os.urandom(size)
    return SECRET_PREFIX + base64.b64encode(raw).decode(), raw


def check_url(url: str, *, allow_http_localhost: bool = False) -> str:
    parts = urlsplit(url)
    if len(url) > schema.URL_LEN or not parts.hostname:
        raise EndpointError(f"not a usable URL: {url!r}")
    if parts.scheme == "https":
        return url
    if parts.scheme == "http" and parts.hostname in _LOCAL_HOSTS:
        if allow_http_localhost:
            return url
        raise EndpointError("http:// is allowed only for 127.0.0.1/localhost with --dev "
                            "(CPS_PUSH_ALLOW_HTTP_LOCALHOST=true)")
    raise EndpointError(f"the URL must be https:// (got {parts.scheme or 'no'} scheme)")


def _aad(endpoint_id: str, secret_id: str) -> bytes:
    return f"{endpoint_id}|{secret_id}".encode()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def add_endpoint(conn: Connection, sealer: Sealer, *, owner_kind: str, owner_id: str, url: str,
                 allow_http_localhost: bool = False, now_ms: int | None = None) -> NewSecret:
    if owner_kind not in OWNER_KINDS:
        raise EndpointError(f"owner kind must be promoter or channel, not {owner_kind!r}")
    if not owner_id or len(owner_id) > schema.ID_LEN:
        raise EndpointError("an owner id of 1 to 64 characters is required")
    check_url(url, allow_http_localhost=allow_http_localhost)
    now = _now_ms() if now_ms is None else now_ms
    endpoint_id = "wh_" + os.urandom(8).hex()
    conn.execute(schema.webhook_endpoints.insert().values(
        endpoint_id=endpoint_id, owner_kind=owner_kind, owner_id=owner_id, url=url,
        status="active", created_at=now, updated_at=now))
    return _add_secret(conn, sealer, endpoint_id, now)


def _add_secret(conn: Connection, sealer: Sealer, endpoint_id: str, now_ms: int) -> NewSecret:
    text, raw = new_secret_text()
    secret_id = "sec_" + os.urandom(6).hex()
    conn.execute(schema.webhook_secrets.insert().values(
        endpoint_id=endpoint_id, secret_id=secret_id,
        secret_sealed=sealer.seal(raw, _aad(endpoint_id, secret_id)), created_at=now_ms))
    return NewSecret(endpoint_id, secret_id, text)


def rotate_secret(conn: Connection, sealer: Sealer, endpoint_id: str, *,
                  grace_ms: int = DEFAULT_GRACE_MS, now_ms: int | None = None) -> NewSecret:
    """A new secret; the active ones expire after ``grace_ms`` (0: at once)."""
    now = _now_ms() if now_ms is None else now_ms
    get_endpoint(conn, endpoint_id)
    table = schema.webhook_secrets
    conn.execute(table.update().where(
        table.c.endpoint_id == endpoint_id,
        sqlalchemy.or_(table.c.expires_at.is_(None), table.c.expires_at > now + grace_ms))
        .values(expires_at=now + grace_ms))
    return _add_secret(conn, sealer, endpoint_id, now)


def active_secrets(conn: Connection, sealer: Sealer, endpoint_ids: list[str],
                   now_ms: int) -> dict[str, list[bytes]]:
    """The raw secrets that sign for each endpoint now, newest first."""
    table = schema.webhook_secrets
    out: dict[str, list[bytes]] = {e: [] for e in endpoint_ids}
    if not endpoint_ids:
        return out
    rows = conn.execute(sqlalchemy.select(table.c.endpoint_id, table.c.secret_id,
                                          table.c.secret_sealed)
                        .where(table.c.endpoint_id.in_(endpoint_ids),
                               sqlalchemy.or_(table.c.expires_at.is_(None),
                                              table.c.expires_at > now_ms))
                        .order_by(table.c.created_at.desc(), table.c.secret_id))
    for endpoint_id, secret_id, sealed in rows:
        out[endpoint_id].append(sealer.unseal(sealed, _aad(endpoint_id, secret_id)))
    return out


def _endpoint(row: sqlalchemy.Row[tuple[object, ...]]) -> Endpoint:
    m = row._mapping
    return Endpoint(m["endpoint_id"], m["owner_kind"], m["owner_id"], m["url"], m["status"],
                    m["disabled_reason"], m["failing_since"], m["created_at"])


def get_endpoint(conn: Connection, endpoint_id: str) -> Endpoint:
    table = schema.webhook_endpoints
    row = conn.execute(sqlalchemy.select(table).where(table.c.endpoint_id == endpoint_id)).first()
    if row is None:
        raise EndpointError(f"no webhook endpoint {endpoint_id!r}")
    return _endpoint(row)


def list_endpoints(conn: Connection, *, owner_kind: str | None = None,
                   owner_id: str | None = None) -> list[Endpoint]:
    table = schema.webhook_endpoints
    query = sqlalchemy.select(table).order_by(table.c.owner_kind, table.c.owner_id,
                                              table.c.created_at, table.c.endpoint_id)
    if owner_kind is not None:
        query = query.where(table.c.owner_kind == owner_kind)
    if owner_id is not None:
        query = query.where(table.c.owner_id == owner_id)
    return [_endpoint(row) for row in conn.execute(query)]


def set_status(conn: Connection, endpoint_id: str, *, active: bool, reason: str | None = None,
               now_ms: int | None = None) -> Endpoint:
    """Disable (with a reason) or re-enable (the failing streak starts over)."""
    now = _now_ms() if now_ms is None else now_ms
    get_endpoint(conn, endpoint_id)
    table = schema.webhook_endpoints
    values: dict[str, object] = (
        {"status": "active", "disabled_reason": None, "disabled_at": None,
         "failing_since": None} if active else
        {"status": "disabled", "disabled_reason": (reason or "disabled by an operator")[:200],
         "disabled_at": now})
    conn.execute(table.update().where(table.c.endpoint_id == endpoint_id)
                 .values(updated_at=now, **values))
    if active:  # what waited for the endpoint is due now
        deliveries = schema.webhook_deliveries
        conn.execute(deliveries.update().where(deliveries.c.endpoint_id == endpoint_id,
                                               deliveries.c.status == "pending")
                     .values(next_attempt_at=now))
    return get_endpoint(conn, endpoint_id)
