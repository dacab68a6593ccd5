"""The one verdict enum of links and click events (a leaf module: links and clicks both
import it, neither imports the other at run time)."""

from __future__ import annotations

from enum import StrEnum


class Verdict(StrEnum):
    VALID = "valid"
    EXPIRED = "expired"
    BOT = "bot"
    DUPLICATE = "duplicate"
    RATE_LIMITED = "rate_limited"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    TARGET_NOT_ALLOWED = "target_not_allowed"
    MALFORMED = "malformed"
