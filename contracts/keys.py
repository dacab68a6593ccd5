"""Key rings: several secrets active at once, each named by a short key id.

Links and cookies both rotate keys the same way: the *first* key in the ring
signs or seals new material, and every key in the ring is accepted when
verifying, so a key can be retired only after everything it signed expired.

Configuration form (an environment variable, or a file holding the same text):

    k2:BASE64URL-SECRET,k1:BASE64URL-SECRET

Secrets never appear in ``repr`` or error messages.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

KID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,16}")
_B64_TEXT = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")


class KeyConfigError(ValueError):
    """A key ring's configuration text is unusable (the message never holds a secret)."""


@dataclass(frozen=True)
class KeyRing(Mapping[str, bytes]):
    """Ordered mapping key id -> secret; ``active_kid`` is the one that signs."""

    _keys: tuple[tuple[str, bytes], ...]
    _index: dict[str, bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self._keys:
            raise KeyConfigError("a key ring needs at least one key")
        index: dict[str, bytes] = {}
        for kid, secret in self._keys:
            if not KID_PATTERN.fullmatch(kid):
                raise KeyConfigError(f"key id {kid!r} must match {KID_PATTERN.pattern}")
            if kid in index:
                raise KeyConfigError(f"key id {kid!r} appears twice")
            index[kid] = secret
        object.__setattr__(self, "_index", index)

    @property
    def active_kid(self) -> str:
        return self._keys[0][0]

    @property
    def active_secret(self) -> bytes:
        return self._keys[0][1]

    def __getitem__(self, kid: str) -> bytes:
        return self._index[kid]

    def __iter__(self) -> Iterator[str]:
        return (kid for kid, _ in self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        # Only key ids: a ring printed in a log or a traceback must not leak secrets.
        return f"KeyRing(kids={list(self)!r})"

    __str__ = __repr__

    @classmethod
    def parse(cls, text: str, *, what: str, sizes: tuple[int, ...] | None = None,
              min_size: int = 32) -> KeyRing:
        """Parse ``kid:base64,kid:base64``; ``what`` names the setting in errors."""
        pairs: list[tuple[str, bytes]] = []
        for n, item in enumerate(p.strip() for p in text.split(",")):
            if not item:
                continue
            kid, sep, encoded = item.partition(":")
            kid = kid.strip()
            if not sep:
                raise KeyConfigError(f"{what}: entry {n + 1} is not of the form KID:BASE64")
            if not KID_PATTERN.fullmatch(kid):
                raise KeyConfigError(f"{what}: entry {n + 1} has an invalid key id "
                                     f"(must match {KID_PATTERN.pattern})")
            if any(kid == seen for seen, _ in pairs):
                raise KeyConfigError(f"{what}: key id {kid!r} appears twice")
            try:
                secret = _b64decode(encoded.strip())
            except (binascii.Error, ValueError):
                raise KeyConfigError(f"{what}: key {kid!r} is not valid base64") from None
            if sizes is not None and len(secret) not in sizes:
                raise KeyConfigError(
                    f"{what}: key {kid!r} is {len(secret)} bytes, must be one of {sizes}")
            if sizes is None and len(secret) < min_size:
                raise KeyConfigError(
                    f"{what}: key {kid!r} is {len(secret)} bytes, needs at least {min_size}")
            pairs.append((kid, secret))
        if not pairs:
            raise KeyConfigError(f"{what}: no keys configured")
        return cls(tuple(pairs))

    def to_text(self) -> str:
        """The configuration text for this ring (for generating dev keys only)."""
        return ",".join(f"{kid}:{_b64encode(secret)}" for kid, secret in self._keys)


def _b64decode(text: str) -> bytes:
    # The decoders skip characters outside the alphabet: "k1:A;k2:B" would
    # silently become one key.
    if not _B64_TEXT.fullmatch(text):
        raise ValueError("not base64")
    padded = text + "=" * (-len(text) % 4)
    if "+" in text or "/" in text:
        return base64.b64decode(padded, validate=True)
    return base64.urlsafe_b64decode(padded)


def _b64encode(secret: bytes) -> str:
    return base64.urlsafe_b64encode(secret).rstrip(b"=").decode("ascii")


def generate_ring(kids: tuple[str, ...] = ("k1",), size: int = 32) -> KeyRing:
    """A fresh ring of random keys (dev stacks and tests; production keys come from a vault)."""
    return KeyRing(tuple((kid, os.urandom(size)) for kid in kids))
