"""The hand-off ring: accepted clicks in a memory-mapped file that outlives the worker.

The request path appends every click it accepts here *before* the 302 leaves,
and the deliverer releases clicks once they are durable elsewhere (acknowledged
by Kafka, written to the Redis stream or to the fsynced spool).  The file is
mapped ``MAP_SHARED``: its pages belong to the kernel's page cache, not to the
process, so a worker killed by SIGKILL or the OOM killer leaves every appended
click behind.  Whoever claims the dead worker's spool directory (its successor
at start-up, or a sibling within ``10 x CPS_PROBE_INTERVAL_MS``) copies the
unreleased clicks into its own spool, from where they reach Kafka.  A click that
was already in Kafka when its worker died is replayed once more: a duplicate
with the same ``click_id``, which consumers drop.

What it does not cover: a kernel crash or power loss (page-cache pages not yet
written back are gone; the spool's fsync is the answer to those).

Layout of ``<spool>/<owner>/ring`` (little-endian)::

    0     magic b"CPSRING1", capacity u64
    16    release slot A: seq u64, offset u64, check u64
    40    release slot B: same
    4096  frames, written one after another, wrapping to 4096 at the end

    frame: value_len u32, key_len u16, flags u16, ts u64, seq u64, key, value

``seq`` numbers frames 1, 2, 3, ... and is written last (``pack_into`` stores
the header fields in order after the payload went in), so a frame whose
append was cut short by the kill has a stale ``seq`` and ends recovery: its
302 was never sent.  Frames of earlier laps carry smaller numbers and end it
too.  A frame that does not fit before the end of the file is preceded by a
wrap marker (``value_len`` 0xFFFFFFFF) carrying the number of the frame that
follows at offset 4096.

A release records "everything before frame ``seq``, which starts at
``offset``, is durable" in the older of two slots, each guarded by a check
word: a kill in the middle of writing one leaves the other, older, slot valid.
Space freed by a release is reused only after its slot is written, so frames
from the older slot's offset on are still intact (and are replayed as
duplicates).

Cost on the request path: two slice copies and one ``pack_into`` into the
mapping, about 0.6 µs for a 600-byte click (no checksum: it would cost as much
again, and a process kill cannot tear a frame in a way ``seq`` misses).  A full
ring (only while every store is failing for longer than the buffer lasts: the
default 64 MiB holds ~100,000 clicks of 600 bytes, twice the buffer's bound)
refuses the append and the click takes the request path's spool fallback.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import struct
from collections import deque
from pathlib import Path

from contracts.records import Record

__all__ = ["DATA_START", "RING_FILE", "HandoffRing", "NoRing", "RingFormatError",
           "read_unreleased"]

log = logging.getLogger("cps.edge.ring")

RING_FILE = "ring"
MAGIC = b"CPSRING1"
DATA_START = 4096
_FILE_HEAD = struct.Struct("<8sQ")
_SLOT = struct.Struct("<QQQ")
_SLOT_AT = (16, 16 + _SLOT.size)
_FRAME = struct.Struct("<IHHQQ")
_FRAME_SIZE = _FRAME.size
_pack_frame = _FRAME.pack_into
_WRAP = 0xFFFFFFFF
_HAS_KEY = 1
# Mixes a slot's two numbers into its check word; a torn slot fails the check.
_CHECK_MUL = 0x9E3779B97F4A7C15
_U64 = (1 << 64) - 1
MIN_CAPACITY = DATA_START + 64 * 1024


class RingFormatError(ValueError):
    """A ring file whose header cannot be trusted; the message says why."""


def _check(seq: int, offset: int) -> int:
    return ((seq * _CHECK_MUL) ^ offset ^ 0x5A5A5A5A5A5A5A5A) & _U64


class HandoffRing:
    """One worker's ring.  ``append`` on the request path, ``release`` after delivery.

    Not thread-safe: both run on the worker's event loop thread.
    """

    __slots__ = ("_capacity", "_ends", "_fd", "_head", "_map", "_next_seq", "_path",
                 "_released_seq", "_slot", "_tail")

    def __init__(self, path: Path, capacity_bytes: int) -> None:
        if capacity_bytes < MIN_CAPACITY:
            raise ValueError(f"a hand-off ring needs at least {MIN_CAPACITY} bytes")
        self._path = Path(path)
        self._capacity = capacity_bytes
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            # Allocated up front: a write into a hole of a full disk or tmpfs would
            # be a SIGBUS on the request path; here it is an OSError at start-up.
            os.posix_fallocate(self._fd, 0, capacity_bytes)
            self._map = mmap.mmap(self._fd, capacity_bytes, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(self._fd)
            self._path.unlink(missing_ok=True)
            raise
        _FILE_HEAD.pack_into(self._map, 0, MAGIC, capacity_bytes)
        self._head = self._tail = DATA_START
        self._next_seq = 1
        self._released_seq = 1
        self._slot = 0
        # End offset of every unreleased frame, oldest first.
        self._ends: deque[int] = deque()
        self._write_slot(1, DATA_START)
        self._write_slot(1, DATA_START)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def pending(self) -> int:
        """Clicks appended and not yet released."""
        return len(self._ends)

    def append(self, record: Record) -> bool:
        """Put ``record`` in the ring; False when there is no room (the caller spools it)."""
        ts, key, value = record
        key_len = len(key) if key else 0
        size = _FRAME_SIZE + key_len + len(value)
        at = self._head
        if at + size > self._capacity:
            at = self._wrap(size)
            if at < 0:
                return False
        elif self._ends and at <= self._tail < at + size:
            # Wrapped (the head is behind the tail): only the gap between them is free.
            return False
        mem = self._map
        body = at + _FRAME_SIZE
        end = at + size
        if key:
            mem[body:body + key_len] = key
        mem[body + key_len:end] = value
        seq = self._next_seq
        # Last: the header, whose seq field makes the frame count.
        _pack_frame(mem, at, len(value), key_len, _HAS_KEY if key else 0, ts, seq)
        self._next_seq = seq + 1
        self._head = end
        self._ends.append(end)
        return True

    def _wrap(self, size: int) -> int:
        """Room for ``size`` bytes at the start of the data area, or -1."""
        tail = self._tail
        if not self._ends:
            # Empty: the next frame may start anywhere; restart at the front.
            tail = self._capacity
        elif self._tail >= self._head:
            return -1  # already wrapped once: the front is still in use
        if DATA_START + size > tail:
            return -1
        if self._head + _FRAME.size <= self._capacity:
            _FRAME.pack_into(self._map, self._head, _WRAP, 0, 0, 0, self._next_seq)
        if not self._ends:
            # Nothing unreleased: recovery starts at the front from now on.
            self._tail = self._head = DATA_START
            self._publish(self._next_seq, DATA_START)
        return DATA_START

    def release(self, count: int) -> None:
        """The oldest ``count`` clicks are durable elsewhere: their space may be reused."""
        ends = self._ends
        if count <= 0 or not ends:
            return
        if count >= len(ends):
            count = len(ends)
            end = self._head
            ends.clear()
        else:
            for _ in range(count - 1):
                ends.popleft()
            end = ends.popleft()
        self._released_seq += count
        self._publish(self._released_seq, end)

    def _publish(self, seq: int, offset: int) -> None:
        # The slot first, the in-memory tail after: freed space is reused only
        # once a recovery would no longer start before it.
        self._write_slot(seq, offset)
        self._tail = offset

    def _write_slot(self, seq: int, offset: int) -> None:
        self._slot ^= 1
        _SLOT.pack_into(self._map, _SLOT_AT[self._slot], seq, offset, _check(seq, offset))

    def close(self, *, remove: bool) -> None:
        """Unmap; delete the file when ``remove`` (every click in it is durable elsewhere)."""
        with contextlib.suppress(ValueError, BufferError):
            self._map.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)
        if remove:
            self._path.unlink(missing_ok=True)


class NoRing:
    """Stands in when the ring is disabled (``CPS_HANDOFF_RING_BYTES=0``)."""

    pending = 0

    def append(self, record: Record) -> bool:
        return True

    def release(self, count: int) -> None:
        return None

    def close(self, *, remove: bool) -> None:
        return None


def read_unreleased(path: Path) -> list[Record]:
    """The clicks a dead worker's ring holds that were never released, in order.

    Raises ``RingFormatError`` when the file is not a ring or both release
    slots are unreadable (the caller quarantines it).
    """
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size < DATA_START:
            raise RingFormatError(f"{path}: {size} bytes, shorter than a ring header")
        with mmap.mmap(file.fileno(), size, access=mmap.ACCESS_READ) as data:
            return _scan(path, data, size)


def _scan(path: Path, data: mmap.mmap, size: int) -> list[Record]:
    magic, capacity = _FILE_HEAD.unpack_from(data, 0)
    if magic != MAGIC or capacity != size:
        raise RingFormatError(f"{path}: not a hand-off ring (bad magic or size)")
    slots = [_SLOT.unpack_from(data, at) for at in _SLOT_AT]
    valid = [(seq, offset) for seq, offset, check in slots
             if check == _check(seq, offset) and DATA_START <= offset <= capacity]
    if not valid:
        raise RingFormatError(f"{path}: both release slots are damaged")
    seq, offset = max(valid)
    records: list[Record] = []
    while True:
        if offset + _FRAME.size > capacity:
            offset = DATA_START
        value_len, key_len, flags, ts, frame_seq = _FRAME.unpack_from(data, offset)
        if frame_seq != seq:
            return records
        if value_len == _WRAP:
            offset = DATA_START
            continue
        body = offset + _FRAME.size
        end = body + key_len + value_len
        if end > capacity or value_len == 0:
            log.warning("ring %s: frame %d at %d overruns the file; stopping", path, seq, offset)
            return records
        key = data[body:body + key_len] if flags & _HAS_KEY else None
        records.append((ts, key, data[body + key_len:end]))
        seq += 1
        offset = end
