"""Append-only disk spool: where click batches go when Kafka and Redis are both down.

Layout under ``root``::

    root/<owner>/lock                       flock'ed for as long as its process lives
    root/<owner>/00000000000000000001.seg   segments, numbered from 1, appended in order
    root/<owner>/cursor                     "SEGMENT OFFSET\\n": where draining resumes
    root/<owner>/ring                       the process's hand-off ring (``edge.delivery.ring``)
    root/corrupt/<owner>-<segment>-<offset>.bin   frames that failed their checks

Every process appends only to a fresh directory of its own, named
``host-pid-randomhex``.  A directory whose lock can be taken belongs to a dead
process: ``claim_orphans`` keeps its lock, drains it before the own directory and
deletes it once it is drained.  Nobody ever appends to a directory it did not create.
A claimed directory's ring is read first: its unreleased clicks (accepted by the
dead process, never delivered) are appended to the claimer's own directory.

A segment is a sequence of frames, each a 16-byte header and a payload::

    magic    4 bytes   b"CPS1"
    length   uint32    payload length
    count    uint32    records in the batch
    crc      uint32    zlib.crc32(payload)
    payload  `length` bytes: the batch, as given to ``append``

(integers little-endian).  A frame is written with one ``os.write`` and then
fsync'ed.  An incomplete frame at the end of a segment is a write torn by a crash,
whose ``append`` never returned: it is ignored.  A complete frame with a bad magic
or checksum is copied to ``root/corrupt`` and skipped, along with the rest of its
segment when the magic is bad, since its length cannot be trusted then.

Delivery is at least once: ``commit`` replaces the cursor atomically, so a crash
before it replays the item and a crash after it never does.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
import shutil
import socket
import struct
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from contracts.records import encode_batch
from edge.delivery.ring import RING_FILE, RingFormatError, read_unreleased

__all__ = ["HEADER", "MAGIC", "DiskSpool", "SpoolItem"]

log = logging.getLogger("cps.edge.spool")

MAGIC = b"CPS1"
HEADER = struct.Struct("<4sIII")
_U32_MAX = 0xFFFFFFFF
_CORRUPT = "corrupt"
# Clicks per spool frame when a dead worker's ring is adopted.
_ADOPT_BATCH = 2000
_COPY_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SpoolItem:
    batch: bytes
    count: int
    # Where the frame lives, so that commit() knows what is acknowledged.
    _dir: str = field(repr=False)
    _seg: int = field(repr=False)
    _offset: int = field(repr=False)
    _end: int = field(repr=False)


class _Dir:
    """One spool directory we hold the lock of, and how far it has been read."""

    __slots__ = ("born", "committed_seg", "fd", "fd_seg", "head", "lock_fd", "offset",
                 "path", "seg")

    def __init__(self, path: Path, lock_fd: int, seg: int, offset: int) -> None:
        self.path = path
        self.lock_fd = lock_fd
        self.seg = seg
        self.offset = offset
        self.committed_seg = seg
        self.born = os.fstat(lock_fd).st_mtime_ns
        self.head: SpoolItem | None = None
        self.fd: int | None = None
        self.fd_seg = 0


def _seg_path(folder: Path, seg: int) -> Path:
    return folder / f"{seg:020d}.seg"


def _segments(folder: Path) -> list[int]:
    names = (n.removesuffix(".seg") for n in os.listdir(folder) if n.endswith(".seg"))
    return sorted(int(n) for n in names if n.isdigit())


def _load_cursor(folder: Path) -> tuple[int, int] | None:
    try:
        seg, offset = (folder / "cursor").read_text().split()
        return int(seg), int(offset)
    except FileNotFoundError:
        return None
    except ValueError:
        # Cannot happen short of disk corruption (the cursor is replaced atomically);
        # replaying the whole directory is the answer that loses nothing.
        log.warning("spool: unreadable cursor in %s, draining it from the start", folder)
        return None


class DiskSpool:
    def __init__(self, root: Path, *, segment_bytes: int = 64 * 1024 * 1024,
                 fsync: bool = True) -> None:
        if segment_bytes <= 0:
            raise ValueError("segment_bytes must be positive")
        self.root = Path(root)
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        # append() may run in an executor thread while another drains.
        self._mutex = threading.Lock()
        self._own: _Dir | None = None
        self._orphans: list[_Dir] = []
        self._wfd: int | None = None
        self._wseg = 1
        self._wsize = 0
        self._batches = 0
        self._records = 0
        self._bytes = 0
        self._corrupt = 0
        # Clicks recovered from dead workers' hand-off rings (the deliverer counts them).
        self.adopted_records = 0

    @property
    def own_path(self) -> Path:
        """This process's own spool directory (where its hand-off ring lives)."""
        return self._require_open().path

    # -- lifecycle ---------------------------------------------------------------

    def open(self) -> None:
        with self._mutex:
            if self._own is not None:
                raise RuntimeError("DiskSpool is already open")
            self.root.mkdir(parents=True, exist_ok=True)
            host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()).lstrip(".") or "host"
            name = f"{host}-{os.getpid()}-{secrets.token_hex(4)}"
            # Built under a hidden name and renamed once locked, so that no other
            # process ever sees it unlocked and takes it for an orphan.
            tmp = self.root / f".new-{name}"
            tmp.mkdir()
            fd = os.open(tmp / "lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.rename(tmp, self.root / name)
                self._sync_dir(self.root)
            except BaseException:
                os.close(fd)
                raise
            self._own = _Dir(self.root / name, fd, 1, 0)
        self.claim_orphans()

    def close(self) -> None:
        with self._mutex:
            own, self._own = self._own, None
            if own is None:
                return
            if self._wfd is not None:
                os.close(self._wfd)
                self._wfd = None
            for d in self._orphans:
                self._release(d)
            self._orphans.clear()
            try:
                drained = self._head(own) is None
            except OSError:
                drained = False
            # An empty directory left behind would only be claimed and deleted by the next process.
            if drained:
                self._remove(own)
            else:
                self._release(own)
            self._wseg, self._wsize = 1, 0
            self._batches = self._records = self._bytes = 0

    def claim_orphans(self) -> int:
        with self._mutex:
            own = self._require_open()
            taken = {own.path.name, *(d.path.name for d in self._orphans)}
            found: list[_Dir] = []
            for name in os.listdir(self.root):
                path = self.root / name
                if name.startswith(".drained-"):
                    # Its drainer died while deleting it; everything in it was committed.
                    shutil.rmtree(path, ignore_errors=True)
                elif not (name.startswith(".") or name == _CORRUPT or name in taken):
                    d = self._try_lock(path)
                    if d is not None:
                        found.append(d)
            found.sort(key=lambda d: (d.born, d.path.name))
            for d in found:
                self._adopt_ring(own, d)
                batches, records, size = self._count(d)
                self._batches += batches
                self._records += records
                self._bytes += size
                # Nothing valid in it: settle it now (quarantining any garbage) and delete it.
                if batches == 0 and self._head(d) is None:
                    self._remove(d)
                else:
                    self._orphans.append(d)
            return len(found)

    def _adopt_ring(self, own: _Dir, d: _Dir) -> None:
        """Move the unreleased clicks of a dead worker's hand-off ring into our own spool.

        Appended (and fsynced) before the ring file is deleted: a crash in between
        replays them once more, duplicates by click id rather than losses.
        """
        path = d.path / RING_FILE
        if not path.exists():
            return
        try:
            records = read_unreleased(path)
        except (RingFormatError, OSError) as err:
            log.error("spool: cannot read the hand-off ring of %s (%s); quarantined", d.path, err)
            folder = self.root / _CORRUPT
            folder.mkdir(exist_ok=True)
            with contextlib.suppress(OSError):
                os.replace(path, folder / f"{d.path.name}-ring.bin")
            return
        for start in range(0, len(records), _ADOPT_BATCH):
            chunk = records[start:start + _ADOPT_BATCH]
            self._append_locked(own, encode_batch(chunk), len(chunk))
        path.unlink()
        self._sync_dir(d.path)
        self.adopted_records += len(records)
        if records:
            log.warning("spool: recovered %d clicks from the hand-off ring of dead worker %s",
                        len(records), d.path.name)

    # -- writing -------------------------------------------------------------------

    def append(self, batch: bytes, count: int) -> None:
        if not 0 <= count <= _U32_MAX or len(batch) > _U32_MAX:
            raise ValueError("batch or count too large for a spool frame")
        with self._mutex:
            self._append_locked(self._require_open(), batch, count)

    def _append_locked(self, own: _Dir, batch: bytes, count: int) -> None:
        frame = HEADER.pack(MAGIC, len(batch), count, zlib.crc32(batch)) + batch
        full = self._wsize and self._wsize + len(frame) > self.segment_bytes
        if full and self._wfd is not None:
            self._retire_writer()
        try:
            fd = self._writer(own)
            if os.write(fd, frame) != len(frame):
                raise OSError("short write to the disk spool")
            if self.fsync:
                os.fsync(fd)
        except OSError:
            # Later frames must not land behind a partial one.
            if self._wfd is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._wfd, self._wsize)
            self._retire_writer()
            raise
        self._wsize += len(frame)
        self._batches += 1
        self._records += count
        self._bytes += len(frame)

    def _writer(self, own: _Dir) -> int:
        if self._wfd is None:
            path = _seg_path(own.path, self._wseg)
            self._wfd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._wsize = os.fstat(self._wfd).st_size
            self._sync_dir(own.path)
        return self._wfd

    def _retire_writer(self) -> None:
        """Finish the current segment; the next append starts a new one."""
        if self._wfd is not None:
            os.close(self._wfd)
            self._wfd = None
        self._wseg += 1
        self._wsize = 0

    # -- draining ------------------------------------------------------------------

    def peek(self) -> SpoolItem | None:
        with self._mutex:
            own = self._require_open()
            while self._orphans:
                item = self._head(self._orphans[0])
                if item is not None:
                    return item
                self._remove(self._orphans[0])
            item = self._head(own)
            if item is None:
                # Everything readable is drained; only frames lost inside a corrupt
                # region of the own directory could still be counted.
                self._batches = self._records = self._bytes = 0
            return item

    def commit(self, item: SpoolItem) -> None:
        with self._mutex:
            own = self._require_open()
            d = next((d for d in (*self._orphans, own) if d.path.name == item._dir), None)
            if d is None or d.head is None or (d.seg, d.offset) != (item._seg, item._offset):
                raise ValueError("commit() of an item that is not the next one of its spool")
            self._write_cursor(d, item._seg, item._end)
            d.offset, d.head = item._end, None
            self._batches -= 1
            self._records -= item.count
            self._bytes -= item._end - item._offset
            if item._seg != d.committed_seg:
                for seg in _segments(d.path):
                    if seg < item._seg:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(_seg_path(d.path, seg))
                d.committed_seg = item._seg
            if d is not own and self._head(d) is None:
                self._remove(d)

    def is_empty(self) -> bool:
        if self._batches == 0 and not self._orphans:
            return True
        return self.peek() is None

    @property
    def pending_batches(self) -> int:
        return self._batches

    @property
    def pending_records(self) -> int:
        return self._records

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    @property
    def corrupt_frames(self) -> int:
        return self._corrupt

    def _head(self, d: _Dir) -> SpoolItem | None:
        """The next valid frame of ``d``, stepping over torn tails and corruption."""
        while d.head is None:
            # The segment appended to by this process has no final end yet.
            live = d is self._own and d.seg >= self._wseg
            fd = self._reader(d)
            size = 0 if fd is None else os.fstat(fd).st_size
            if fd is None or d.offset + HEADER.size > size:
                if live:
                    return None
                self._torn(d, size)
                if not self._next_segment(d):
                    return None
                continue
            magic, length, count, crc = HEADER.unpack(os.pread(fd, HEADER.size, d.offset))
            if magic != MAGIC:
                self._quarantine(d, fd, size)
                if live:
                    self._retire_writer()
                if not self._next_segment(d):
                    return None
                continue
            end = d.offset + HEADER.size + length
            if end > size:
                if live:
                    return None
                self._torn(d, size)
                if not self._next_segment(d):
                    return None
                continue
            payload = os.pread(fd, length, d.offset + HEADER.size)
            if zlib.crc32(payload) != crc:
                self._quarantine(d, fd, end)
                # Counted when it was appended or claimed; it will never be drained.
                self._batches -= 1
                self._records -= count
                self._bytes -= end - d.offset
                d.offset = end
                continue
            d.head = SpoolItem(payload, count, d.path.name, d.seg, d.offset, end)
        return d.head

    def _reader(self, d: _Dir) -> int | None:
        if d.fd is not None and d.fd_seg == d.seg:
            return d.fd
        self._close_reader(d)
        try:
            d.fd = os.open(_seg_path(d.path, d.seg), os.O_RDONLY)
        except FileNotFoundError:
            return None
        d.fd_seg = d.seg
        return d.fd

    def _next_segment(self, d: _Dir) -> bool:
        later = [seg for seg in _segments(d.path) if seg > d.seg]
        if later:
            d.seg = later[0]
        elif d is self._own:
            d.seg = self._wseg
        else:
            return False
        d.offset = 0
        return True

    def _count(self, d: _Dir) -> tuple[int, int, int]:
        """Batches, records and bytes pending in ``d``, from frame headers alone."""
        batches = records = size = 0
        for seg in _segments(d.path):
            if seg < d.seg:
                continue
            offset = d.offset if seg == d.seg else 0
            fd = os.open(_seg_path(d.path, seg), os.O_RDONLY)
            try:
                end = os.fstat(fd).st_size
                while offset + HEADER.size <= end:
                    magic, length, count, _ = HEADER.unpack(os.pread(fd, HEADER.size, offset))
                    if magic != MAGIC or offset + HEADER.size + length > end:
                        break
                    batches += 1
                    records += count
                    size += HEADER.size + length
                    offset += HEADER.size + length
            finally:
                os.close(fd)
        return batches, records, size

    def _torn(self, d: _Dir, size: int) -> None:
        if size > d.offset:
            log.warning("spool: ignoring a torn write of %d bytes at the end of %s",
                        size - d.offset, _seg_path(d.path, d.seg))

    def _quarantine(self, d: _Dir, fd: int, end: int) -> None:
        """Copy the bytes of ``d`` from its read offset to ``end`` into ``root/corrupt``."""
        folder = self.root / _CORRUPT
        folder.mkdir(exist_ok=True)
        dest = folder / f"{d.path.name}-{d.seg:020d}-{d.offset}.bin"
        with open(dest, "wb") as out:
            pos = d.offset
            while pos < end:
                chunk = os.pread(fd, min(_COPY_CHUNK, end - pos), pos)
                if not chunk:
                    break
                out.write(chunk)
                pos += len(chunk)
            if self.fsync:
                out.flush()
                os.fsync(out.fileno())
        self._sync_dir(folder)
        self._corrupt += 1
        log.warning("spool: corrupt data in %s at offset %d, %d bytes copied to %s",
                    _seg_path(d.path, d.seg), d.offset, end - d.offset, dest)

    # -- directories ---------------------------------------------------------------

    def _try_lock(self, path: Path) -> _Dir | None:
        try:
            fd = os.open(path / "lock", os.O_RDWR)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Its drainer may have renamed it away for deletion between open and flock.
            ours = os.path.samestat(os.stat(path / "lock"), os.fstat(fd))
        except (BlockingIOError, FileNotFoundError):
            ours = False
        if not ours:
            os.close(fd)
            return None
        segments = _segments(path)
        seg, offset = _load_cursor(path) or (segments[0] if segments else 1, 0)
        return _Dir(path, fd, seg, offset)

    def _write_cursor(self, d: _Dir, seg: int, offset: int) -> None:
        tmp = d.path / "cursor.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"%d %d\n" % (seg, offset))
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, d.path / "cursor")
        self._sync_dir(d.path)

    def _remove(self, d: _Dir) -> None:
        """Delete a drained directory, then let go of its lock."""
        if d in self._orphans:
            self._orphans.remove(d)
        self._close_reader(d)
        # Renamed out of sight first: a crash halfway through deleting must not leave
        # segments without their cursor under a name that would be drained again.
        gone = self.root / f".drained-{d.path.name}"
        os.rename(d.path, gone)
        self._sync_dir(self.root)
        shutil.rmtree(gone, ignore_errors=True)
        os.close(d.lock_fd)

    def _release(self, d: _Dir) -> None:
        self._close_reader(d)
        os.close(d.lock_fd)

    @staticmethod
    def _close_reader(d: _Dir) -> None:
        if d.fd is not None:
            os.close(d.fd)
            d.fd = None

    def _sync_dir(self, path: Path) -> None:
        if self.fsync:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _require_open(self) -> _Dir:
        if self._own is None:
            raise RuntimeError("DiskSpool is not open")
        return self._own
