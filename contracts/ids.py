"""Identifiers: time-sortable click ids, random visitor ids, AES-GCM nonces.

All randomness comes from ``os.urandom`` (the kernel CSPRNG), drawn in blocks
because one syscall per request is measurable on the redirect path.  The
block is thrown away in a forked child: two processes sharing one block
would hand out the same nonces, and a repeated AES-GCM nonce breaks the
cookie seal.
"""

from __future__ import annotations

import base64
import binascii
import os
import time

_BLOCK = 8192


class RandomPool:
    """Hands out slices of a CSPRNG block; refills when it runs dry."""

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def take(self, n: int) -> bytes:
        pos = self._pos
        end = pos + n
        if end > len(self._buf):
            self._buf = os.urandom(max(_BLOCK, n))
            pos, end = 0, n
        self._pos = end
        return self._buf[pos:end]

    def reset(self) -> None:
        self._buf = b""
        self._pos = 0


POOL = RandomPool()
os.register_at_fork(after_in_child=POOL.reset)


def new_click_id(now_ms: int | None = None) -> str:
    """28 lowercase hex chars: 48-bit ms timestamp then 64 random bits.

    Lexicographic order is time order (to the millisecond), so click stores
    can range-scan by id; 64 random bits make collisions within one
    millisecond negligible (about 2**-32 at four billion clicks per ms).
    """
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    return f"{ms:012x}{POOL.take(8).hex()}"


def click_id_ms(click_id: str) -> int:
    """The millisecond timestamp a click id was minted at."""
    return int(click_id[:12], 16)


def new_visitor_id() -> str:
    """22 url-safe chars carrying 128 random bits."""
    return base64.urlsafe_b64encode(POOL.take(16))[:22].decode("ascii")


URLSAFE = bytes.maketrans(b"+/", b"-_")


def new_click_and_visitor(now_ms: int) -> tuple[str, str]:
    """``new_click_id(now_ms)`` and ``new_visitor_id()`` from one draw (the redirect's path)."""
    r = POOL.take(24)
    visitor = binascii.b2a_base64(r[8:], newline=False).translate(URLSAFE)[:22]
    return f"{now_ms:012x}{r[:8].hex()}", visitor.decode("ascii")


def new_nonce() -> bytes:
    """A 96-bit AES-GCM nonce; random nonces are safe up to 2**32 seals per key."""
    return POOL.take(12)
