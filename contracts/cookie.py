"""The sealed attribution cookie (SPEC section 5).

Wire form of the cookie value:  ``KID.BASE64URL(nonce[12] || ciphertext || tag[16])``

The plaintext is the JSON array
``[1, visitor_id, promoter_id, channel_id, click_id, click_ms, window_end_ms]``
(``1`` is the payload version).  AES-256-GCM authenticates it with the
associated data ``b"cps-attr-v1|" + KID``, so a value can be neither forged
nor edited nor moved to another key id.  The trade system copies the value
verbatim into orders as ``attribution_token``; ``CookieSealer.unseal`` is
how attribution reads it back.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from contracts.ids import POOL, URLSAFE
from contracts.keys import KeyRing

PAYLOAD_VERSION = 1
AES_KEY_SIZES = (16, 24, 32)
_AAD_PREFIX = b"cps-attr-v1|"
_BODY = re.compile(r"[A-Za-z0-9_-]+")
# Longer values are refused before any decoding work.
MAX_SEALED_LEN = 1024


@dataclass(frozen=True, slots=True)
class Attribution:
    visitor_id: str
    promoter_id: str
    channel_id: str
    click_id: str
    click_ms: int
    window_end_ms: int


class CookieSealer:
    """Seals with the ring's active key; unseals with any key of the ring."""

    __slots__ = ("_aads", "_active", "_ciphers")

    def __init__(self, ring: KeyRing) -> None:
        for kid in ring:
            if len(ring[kid]) not in AES_KEY_SIZES:
                raise ValueError(f"cookie key {kid!r} must be 16, 24 or 32 bytes")
        self._ciphers = {kid: AESGCM(ring[kid]) for kid in ring}
        self._aads = {kid: _AAD_PREFIX + kid.encode("ascii") for kid in ring}
        kid = ring.active_kid
        # (cipher, aad, value prefix) for the sealing key, resolved once.
        self._active = (self._ciphers[kid], self._aads[kid], (kid + ".").encode("ascii"))

    def seal(self, a: Attribution) -> str:
        return self.seal_fields(a.visitor_id, a.promoter_id, a.channel_id, a.click_id,
                                a.click_ms, a.window_end_ms).decode("ascii")

    def seal_fields(self, visitor_id: str, promoter_id: str, channel_id: str, click_id: str,
                    click_ms: int, window_end_ms: int) -> bytes:
        """The sealed value as ASCII bytes, ready for a header (the redirect's hot path)."""
        cipher, aad, prefix = self._active
        nonce = POOL.take(12)  # 96 random bits: safe up to 2**32 seals per key
        plaintext = orjson.dumps([PAYLOAD_VERSION, visitor_id, promoter_id, channel_id,
                                  click_id, click_ms, window_end_ms])
        sealed = nonce + cipher.encrypt(nonce, plaintext, aad)
        return prefix + binascii.b2a_base64(sealed, newline=False).translate(URLSAFE).rstrip(b"=")

    def unseal(self, value: str) -> Attribution | None:
        """The attribution in ``value``; None if forged, edited or sealed under an unknown key."""
        if len(value) > MAX_SEALED_LEN:
            return None
        kid, dot, body = value.partition(".")
        cipher = self._ciphers.get(kid)
        if cipher is None or not dot or not _BODY.fullmatch(body):
            return None
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            return None
        # One spelling per token: the attribution token is compared as a string downstream.
        if base64.urlsafe_b64encode(raw).rstrip(b"=") != body.encode("ascii"):
            return None
        if len(raw) < 12 + 16:
            return None
        try:
            plaintext = cipher.decrypt(raw[:12], raw[12:], self._aads[kid])
        except InvalidTag:
            return None
        try:
            version, visitor, promoter, channel, click_id, click_ms, window_end = \
                orjson.loads(plaintext)
            if version != PAYLOAD_VERSION:
                return None
            return Attribution(str(visitor), str(promoter), str(channel), str(click_id),
                               int(click_ms), int(window_end))
        except (orjson.JSONDecodeError, TypeError, ValueError):
            return None
