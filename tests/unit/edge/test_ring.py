"""The hand-off ring: what a dead worker leaves behind is exactly what it never released."""

from __future__ import annotations

import os
import random
import signal
import struct
import subprocess
import sys
from collections import deque
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.records import Record, decode_batch
from edge.delivery.ring import (
    DATA_START,
    MIN_CAPACITY,
    RING_FILE,
    HandoffRing,
    NoRing,
    RingFormatError,
    read_unreleased,
)
from edge.delivery.spool import DiskSpool

REPO = Path(__file__).resolve().parents[3]
FRAME = struct.Struct("<IHHQQ")


def record(i: int, size: int = 100, key: bool = True) -> Record:
    value = b'{"click_id":"%028d","pad":"' % i
    value += b"x" * max(0, size - len(value) - 2) + b'"}'
    return (1_700_000_000_000 + i, b"buyer%06d" % i if key else None, value)


def test_unreleased_records_are_read_back_in_order(tmp_path: Path) -> None:
    ring = HandoffRing(tmp_path / "ring", MIN_CAPACITY)
    records = [record(i, key=i % 3 != 0) for i in range(50)]
    for r in records:
        assert ring.append(r)
    ring.release(20)
    assert ring.pending == 30
    # The worker "dies" here: nothing is closed or flushed.
    assert read_unreleased(tmp_path / "ring") == records[20:]


def test_fully_released_ring_holds_nothing(tmp_path: Path) -> None:
    ring = HandoffRing(tmp_path / "ring", MIN_CAPACITY)
    for i in range(10):
        ring.append(record(i))
    ring.release(10)
    assert read_unreleased(tmp_path / "ring") == []
    assert ring.pending == 0


def test_release_of_more_than_pending_is_capped(tmp_path: Path) -> None:
    ring = HandoffRing(tmp_path / "ring", MIN_CAPACITY)
    ring.append(record(1))
    ring.release(5)
    ring.release(0)
    ring.append(record(2))
    assert read_unreleased(tmp_path / "ring") == [record(2)]


def test_close_removes_the_file_only_when_asked(tmp_path: Path) -> None:
    ring = HandoffRing(tmp_path / "ring", MIN_CAPACITY)
    ring.append(record(1))
    ring.close(remove=False)
    assert read_unreleased(tmp_path / "ring") == [record(1)]
    (tmp_path / "ring").unlink()
    ring = HandoffRing(tmp_path / "ring", MIN_CAPACITY)
    ring.close(remove=True)
    assert not (tmp_path / "ring").exists()


def test_an_existing_file_is_never_reused(tmp_path: Path) -> None:
    HandoffRing(tmp_path / "ring", MIN_CAPACITY)
    with pytest.raises(FileExistsError):
        HandoffRing(tmp_path / "ring", MIN_CAPACITY)


def test_too_small_a_ring_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least"):
        HandoffRing(tmp_path / "ring", MIN_CAPACITY - 1)


def test_full_ring_refuses_and_recovers_after_release(tmp_path: Path) -> None:
    ring = HandoffRing(tmp_path / "ring", MIN_CAPACITY)
    accepted = []
    i = 0
    while ring.append(r := record(i, size=1000)):
        accepted.append(r)
        i += 1
    frame = FRAME.size + len(r[1] or b"") + len(r[2])
    # Refused only when (nearly) full: at most one frame of space is left unused.
    assert len(accepted) * frame > MIN_CAPACITY - DATA_START - 2 * frame
    assert read_unreleased(tmp_path / "ring") == accepted
    ring.release(10)
    more = [record(i + k, size=1000) for k in range(1, 11)]
    assert all(ring.append(r) for r in more)
    assert read_unreleased(tmp_path / "ring") == accepted[10:] + more


def test_wrapping_many_laps_keeps_exactly_the_unreleased(tmp_path: Path) -> None:
    ring = HandoffRing(tmp_path / "ring", MIN_CAPACITY)
    model: deque[Record] = deque()
    rng = random.Random(7)
    for i in range(20_000):
        r = record(i, size=rng.randrange(60, 3000), key=rng.random() < 0.9)
        if ring.append(r):
            model.append(r)
        if rng.random() < 0.3:
            k = rng.randrange(0, len(model) + 1)
            ring.release(k)
            for _ in range(min(k, len(model))):
                model.popleft()
        if i % 997 == 0:
            assert read_unreleased(tmp_path / "ring") == list(model)
    assert read_unreleased(tmp_path / "ring") == list(model)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(1, 20_000), st.booleans()),
    st.tuples(st.just("release"), st.integers(0, 40), st.just(False))), max_size=120))
def test_any_sequence_reads_back_exactly_the_unreleased(tmp_path: Path,
                                                        ops: list[tuple[str, int, bool]]) -> None:
    path = tmp_path / "ring"
    path.unlink(missing_ok=True)
    ring = HandoffRing(path, MIN_CAPACITY)
    model: deque[Record] = deque()
    for n, (op, arg, key) in enumerate(ops):
        if op == "append":
            r = record(n, size=arg, key=key)
            if ring.append(r):
                model.append(r)
            else:
                pending = sum(FRAME.size + len(k or b"") + len(v) for _, k, v in model)
                # A refusal means real pressure, never a bookkeeping slip.
                assert pending + FRAME.size + arg > (MIN_CAPACITY - DATA_START) // 2 - 20_100
        else:
            ring.release(arg)
            for _ in range(min(arg, len(model))):
                model.popleft()
        assert ring.pending == len(model)
    assert read_unreleased(path) == list(model)
    ring.close(remove=True)


def test_a_frame_cut_short_ends_recovery_before_it(tmp_path: Path) -> None:
    ring = HandoffRing(tmp_path / "ring", MIN_CAPACITY)
    for i in range(5):
        ring.append(record(i))
    data = bytearray((tmp_path / "ring").read_bytes())
    # Frame 4 (the last) as a kill between its payload and its header leaves it.
    size = FRAME.size + len(record(0)[1] or b"") + len(record(0)[2])
    last = DATA_START + 4 * size
    assert FRAME.unpack_from(data, last)[4] == 5
    data[last + 16:last + 24] = b"\x00" * 8
    (tmp_path / "ring").write_bytes(bytes(data))
    assert read_unreleased(tmp_path / "ring") == [record(i) for i in range(4)]


def test_torn_newest_release_slot_falls_back_to_the_older(tmp_path: Path) -> None:
    ring = HandoffRing(tmp_path / "ring", MIN_CAPACITY)
    for i in range(10):
        ring.append(record(i))
    ring.release(3)
    ring.release(3)  # the newest slot says "from frame 7"; the older "from frame 4"
    data = bytearray((tmp_path / "ring").read_bytes())
    newest = 16 if struct.unpack_from("<Q", data, 16)[0] == 7 else 40
    data[newest + 8] ^= 0xFF  # its offset half-written
    (tmp_path / "ring").write_bytes(bytes(data))
    # A duplicate or three (frames 4-6 were already delivered), never a loss.
    assert read_unreleased(tmp_path / "ring") == [record(i) for i in range(3, 10)]


def test_damaged_files_are_refused_with_a_reason(tmp_path: Path) -> None:
    (tmp_path / "short").write_bytes(b"CPSRING1")
    with pytest.raises(RingFormatError, match="shorter"):
        read_unreleased(tmp_path / "short")
    (tmp_path / "junk").write_bytes(b"x" * MIN_CAPACITY)
    with pytest.raises(RingFormatError, match="magic"):
        read_unreleased(tmp_path / "junk")
    ring = HandoffRing(tmp_path / "ring", MIN_CAPACITY)
    ring.close(remove=False)
    data = bytearray((tmp_path / "ring").read_bytes())
    data[16:64] = b"\x01" * 48
    (tmp_path / "ring").write_bytes(bytes(data))
    with pytest.raises(RingFormatError, match="slots"):
        read_unreleased(tmp_path / "ring")


def test_no_ring_accepts_everything() -> None:
    ring = NoRing()
    assert ring.append(record(1))
    ring.release(1)
    ring.close(remove=True)
    assert ring.pending == 0


CHILD = """
import os, signal, sys
from pathlib import Path
from edge.delivery.ring import HandoffRing, RING_FILE
from edge.delivery.spool import DiskSpool
from tests.unit.edge.test_ring import record
spool = DiskSpool(Path(sys.argv[1]), fsync=False)
spool.open()
ring = HandoffRing(spool.own_path / RING_FILE, 4096 + 1024 * 1024)
for i in range(int(sys.argv[2])):
    assert ring.append(record(i, size=300 + i % 500))
    if i % 100 == 99:
        ring.release(60)
print(ring.pending, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sigkilled_workers_ring_is_adopted_into_the_claimers_spool(tmp_path: Path) -> None:
    child = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), "1000"], cwd=REPO,
                           env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                           timeout=60, check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr
    pending = int(child.stdout)
    assert pending == 1000 - 10 * 60

    spool = DiskSpool(tmp_path, fsync=False)
    spool.open()  # claims the dead worker's directory, and its ring
    assert spool.adopted_records == pending
    got: list[Record] = []
    while (item := spool.peek()) is not None:
        got += decode_batch(item.batch)
        spool.commit(item)
    # The dead worker released the oldest 600: the other 400 come back, in order.
    assert got == [record(i, size=300 + i % 500) for i in range(600, 1000)]
    assert [p.name for p in tmp_path.iterdir()] == [spool.own_path.name]
    spool.close()


def test_unreadable_ring_of_a_dead_worker_is_quarantined(tmp_path: Path) -> None:
    dead = DiskSpool(tmp_path, fsync=False)
    dead.open()
    dead.append(b"1\t\t{}\n", 1)  # keeps its directory on close
    (dead.own_path / RING_FILE).write_bytes(b"garbage")
    name = dead.own_path.name
    dead.close()
    spool = DiskSpool(tmp_path, fsync=False)
    spool.open()
    assert spool.adopted_records == 0
    assert (tmp_path / "corrupt" / f"{name}-ring.bin").read_bytes() == b"garbage"
    spool.close()
