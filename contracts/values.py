"""Wire values as error messages show them: short, and safe for any JSON a sender can build.

``repr`` of a value nested a thousand lists deep raises ``RecursionError``, and of a
5,000-digit integer (which ``from_dict`` callers can pass) ``ValueError``: an error
message must not become the error.  Containers are described by type and size,
numbers and strings are shown truncated.
"""

from __future__ import annotations

MAX_SHOWN = 40


def show(value: object) -> str:
    """``'abc'``, ``12``, ``a list of 3``, ``an integer of 5001 digits``, ``null``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if value.bit_length() > 128:
            return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        shown = repr(value[:MAX_SHOWN])
        return shown if len(value) <= MAX_SHOWN else shown[:-1] + "...'"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return f"an object of {len(value)} fields"
    return f"a {type(value).__name__}"
