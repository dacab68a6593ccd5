"""Batches of Kafka-bound records as bytes, for the fallback stream and the disk spool.

A record is ``(timestamp_ms, key, value)``.  A batch is encoded as lines of
``TIMESTAMP \\t KEY \\t VALUE \\n`` (an empty KEY means no key).  Values are
JSON documents, which never hold a raw tab or newline, so no escaping is
needed; ``encode_batch`` refuses a value that does.

The Redis fallback stream stores one batch per entry (fields ``n`` = record
count, ``b`` = encoded batch), so a consumer reading the stream directly, such
as a click persister, decodes entries with ``decode_batch``.
"""

from __future__ import annotations

from collections.abc import Iterable

Record = tuple[int, bytes | None, bytes]


class BatchFormatError(ValueError):
    """Bytes that are not an encoded batch; the message says where."""


def encode_batch(records: Iterable[Record]) -> bytes:
    parts: list[bytes] = []
    for ts, key, value in records:
        if ts < 0 or not value:
            raise BatchFormatError("record needs a non-negative timestamp and a value")
        if b"\n" in value or b"\t" in value or (key and (b"\n" in key or b"\t" in key)):
            raise BatchFormatError("record holds a raw tab or newline")
        parts.append(b"%d\t%s\t%s\n" % (ts, key or b"", value))
    return b"".join(parts)


def decode_batch(data: bytes) -> list[Record]:
    if data and not data.endswith(b"\n"):
        raise BatchFormatError("batch does not end with a newline (torn write?)")
    out: list[Record] = []
    for n, line in enumerate(data.split(b"\n")[:-1]):
        ts_b, sep1, rest = line.partition(b"\t")
        key, sep2, value = rest.partition(b"\t")
        if not (sep1 and sep2 and ts_b.isdigit() and value):
            raise BatchFormatError(f"line {n + 1} is not TIMESTAMP<TAB>KEY<TAB>VALUE")
        out.append((int(ts_b), key or None, value))
    return out
