from __future__ import annotations

import logging
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.records import encode_batch
from edge.delivery.spool import DiskSpool

REPO = Path(__file__).resolve().parents[2]
HEADER_SIZE = struct.calcsize("<4sIII")


def frame_size(batch: bytes) -> int:
    return HEADER_SIZE + len(batch)


def opened(root: Path, segment_bytes: int = 64 * 1024 * 1024) -> DiskSpool:
    spool = DiskSpool(root, segment_bytes=segment_bytes, fsync=False)
    spool.open()
    return spool


def drain(spool: DiskSpool, limit: int | None = None) -> list[tuple[bytes, int]]:
    out: list[tuple[bytes, int]] = []
    while limit is None or len(out) < limit:
        item = spool.peek()
        if item is None:
            break
        out.append((item.batch, item.count))
        spool.commit(item)
    return out


def spool_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name != "corrupt")


def segment_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.seg"))


def batches(n: int, size: int = 30) -> list[tuple[bytes, int]]:
    return [(b"%03d" % i + b"x" * (size - 3), i + 1) for i in range(n)]


def test_round_trip_keeps_order_bytes_and_counters(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    data = [
        (encode_batch([(1_700_000_000_000, b"buyer", b'{"a":1}')]), 1),
        (b"", 0),
        (encode_batch([(1, None, b"{}"), (2, b"k", b'{"b":2}')]), 2),
        (bytes(range(256)) * 40, 7),
    ]
    assert spool.is_empty()
    for batch, count in data:
        spool.append(batch, count)
    assert spool.pending_batches == 4
    assert spool.pending_records == 10
    assert spool.pending_bytes == sum(frame_size(b) for b, _ in data)
    assert not spool.is_empty()

    assert drain(spool) == data
    assert spool.is_empty()
    assert (spool.pending_batches, spool.pending_records, spool.pending_bytes) == (0, 0, 0)
    spool.close()


def test_peek_without_commit_returns_the_same_item(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.append(b"first", 1)
    spool.append(b"second", 2)
    a, b = spool.peek(), spool.peek()
    assert a is not None
    assert b is not None
    assert (a.batch, a.count) == (b.batch, b.count) == (b"first", 1)
    assert spool.pending_batches == 2
    spool.commit(a)
    with pytest.raises(ValueError, match="not the next one"):
        spool.commit(a)
    c = spool.peek()
    assert c is not None
    assert c.batch == b"second"
    assert spool.pending_batches == 1
    assert spool.pending_records == 2
    spool.close()


def test_segments_roll_and_drained_ones_are_deleted(tmp_path: Path) -> None:
    # 46-byte frames: two fit in a 100-byte segment, the third starts a new one.
    spool = opened(tmp_path, segment_bytes=100)
    data = batches(6)
    for batch, count in data:
        spool.append(batch, count)
    (own,) = spool_dirs(tmp_path)
    assert segment_files(own) == [f"{n:020d}.seg" for n in (1, 2, 3)]
    assert all((own / name).stat().st_size == 92 for name in segment_files(own))

    assert drain(spool, 3) == data[:3]
    assert segment_files(own) == [f"{n:020d}.seg" for n in (2, 3)]
    assert drain(spool) == data[3:]
    # The segment being appended to stays, even when fully drained.
    assert segment_files(own) == [f"{3:020d}.seg"]

    spool.append(b"after", 1)
    assert drain(spool) == [(b"after", 1)]
    assert segment_files(own) == [f"{4:020d}.seg"]
    spool.close()


def test_closed_spool_is_claimed_and_drained_before_new_data(tmp_path: Path) -> None:
    first = opened(tmp_path, segment_bytes=100)
    old = batches(5)
    for batch, count in old:
        first.append(batch, count)
    first.close()
    (old_dir,) = spool_dirs(tmp_path)
    assert len(segment_files(old_dir)) == 3, "close() must not delete undrained data"

    second = opened(tmp_path)
    assert second.pending_batches == 5
    assert second.pending_records == 15
    assert second.pending_bytes == sum(frame_size(b) for b, _ in old)
    second.append(b"new", 4)
    assert second.claim_orphans() == 0, "an orphan is claimed once"

    assert drain(second) == [*old, (b"new", 4)]
    assert not old_dir.exists()
    assert len(spool_dirs(tmp_path)) == 1
    assert second.pending_batches == second.pending_records == 0
    second.close()
    assert spool_dirs(tmp_path) == [], "a drained own directory is removed on close"


def test_orphans_drain_oldest_first(tmp_path: Path) -> None:
    for n in range(3):
        spool = opened(tmp_path)
        spool.append(b"owner %d" % n, n)
        spool.close()
        time.sleep(0.05)  # lock file mtimes tell the owners' ages apart
    spool = opened(tmp_path)
    assert drain(spool) == [(b"owner 0", 0), (b"owner 1", 1), (b"owner 2", 2)]
    assert len(spool_dirs(tmp_path)) == 1
    spool.close()


def test_directory_of_a_live_spool_in_this_process_is_not_claimed(tmp_path: Path) -> None:
    alive = opened(tmp_path)
    alive.append(b"mine", 1)
    other = opened(tmp_path)
    assert other.claim_orphans() == 0
    assert other.is_empty()
    assert other.pending_batches == 0
    assert drain(alive) == [(b"mine", 1)]
    other.close()
    alive.close()


def test_commit_survives_restart_and_uncommitted_item_is_replayed(tmp_path: Path) -> None:
    first = opened(tmp_path)
    for batch, count in batches(3):
        first.append(batch, count)
    item = first.peek()
    assert item is not None
    first.commit(item)
    peeked = first.peek()
    assert peeked is not None
    assert peeked.batch == batches(3)[1][0]
    first.close()  # peeked but not committed: a crash before commit

    second = opened(tmp_path)
    assert second.pending_batches == 2
    assert second.pending_records == 5
    assert drain(second) == batches(3)[1:]
    second.close()


def test_committed_cursor_is_on_disk_before_the_next_peek(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, fsync=True)
    spool.open()
    spool.append(b"a", 1)
    spool.append(b"b", 1)
    item = spool.peek()
    assert item is not None
    spool.commit(item)
    (own,) = spool_dirs(tmp_path)
    seg, offset = (own / "cursor").read_text().split()
    assert (int(seg), int(offset)) == (1, frame_size(b"a"))
    assert not (own / "cursor.tmp").exists()
    spool.close()


# Into the payload, into the header, all but one byte of the frame.
@pytest.mark.parametrize("cut", [3, 11, HEADER_SIZE + 5 - 1])
def test_torn_tail_is_ignored(tmp_path: Path, cut: int, caplog: pytest.LogCaptureFixture) -> None:
    first = opened(tmp_path)
    data = [(b"aaaaa", 1), (b"bbbbb", 2), (b"ccccc", 3)]
    for batch, count in data:
        first.append(batch, count)
    first.close()
    (old_dir,) = spool_dirs(tmp_path)
    seg = old_dir / f"{1:020d}.seg"
    os.truncate(seg, seg.stat().st_size - cut)

    second = opened(tmp_path)
    assert second.pending_batches == 2
    assert second.pending_records == 3
    with caplog.at_level(logging.WARNING, logger="cps.edge.spool"):
        assert drain(second) == data[:2]
    assert "torn" in caplog.text
    assert second.corrupt_frames == 0
    assert not (tmp_path / "corrupt").exists()
    assert not old_dir.exists()
    assert second.pending_batches == second.pending_records == second.pending_bytes == 0
    second.close()


def test_torn_tail_ends_only_its_segment(tmp_path: Path) -> None:
    first = opened(tmp_path, segment_bytes=100)
    data = batches(4)  # segments: [0, 1] [2, 3]
    for batch, count in data:
        first.append(batch, count)
    first.close()
    (old_dir,) = spool_dirs(tmp_path)
    seg1 = old_dir / f"{1:020d}.seg"
    os.truncate(seg1, seg1.stat().st_size - 10)

    second = opened(tmp_path)
    assert second.pending_batches == 3
    assert drain(second) == [data[0], data[2], data[3]]
    second.close()


def test_crc_mismatch_goes_to_corrupt_and_the_rest_drains(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = opened(tmp_path)
    data = [(b"aaaaa", 1), (b"bbbbb", 2), (b"ccccc", 3)]
    for batch, count in data:
        first.append(batch, count)
    first.close()
    (old_dir,) = spool_dirs(tmp_path)
    seg = old_dir / f"{1:020d}.seg"
    raw = bytearray(seg.read_bytes())
    start = frame_size(b"aaaaa")
    raw[start + HEADER_SIZE + 2] ^= 0xFF
    seg.write_bytes(raw)

    second = opened(tmp_path)
    assert second.pending_batches == 3  # headers alone cannot tell
    with caplog.at_level(logging.WARNING, logger="cps.edge.spool"):
        assert drain(second) == [data[0], data[2]]
    assert second.corrupt_frames == 1
    assert "corrupt" in caplog.text
    (quarantined,) = (tmp_path / "corrupt").iterdir()
    assert quarantined.name == f"{old_dir.name}-{1:020d}-{start}.bin"
    assert quarantined.read_bytes() == bytes(raw[start:start + frame_size(b"bbbbb")])
    assert second.pending_batches == second.pending_records == second.pending_bytes == 0
    assert not old_dir.exists()
    second.close()


def test_bad_magic_quarantines_the_rest_of_its_segment(tmp_path: Path) -> None:
    first = opened(tmp_path, segment_bytes=100)
    data = batches(6)  # segments: [0, 1] [2, 3] [4, 5]
    for batch, count in data:
        first.append(batch, count)
    first.close()
    (old_dir,) = spool_dirs(tmp_path)
    seg2 = old_dir / f"{2:020d}.seg"
    raw = bytearray(seg2.read_bytes())
    raw[0:4] = b"XXXX"
    seg2.write_bytes(raw)

    second = opened(tmp_path)
    assert second.pending_batches == 4
    assert second.pending_records == 1 + 2 + 5 + 6
    assert drain(second) == [data[0], data[1], data[4], data[5]]
    assert second.corrupt_frames == 1
    (quarantined,) = (tmp_path / "corrupt").iterdir()
    assert quarantined.name == f"{old_dir.name}-{2:020d}-0.bin"
    assert quarantined.read_bytes() == bytes(raw)
    assert second.pending_batches == second.pending_records == 0
    second.close()


def test_orphan_with_only_garbage_is_settled_at_claim(tmp_path: Path) -> None:
    first = opened(tmp_path)
    first.append(b"lost to bit rot", 3)
    first.close()
    (old_dir,) = spool_dirs(tmp_path)
    seg = old_dir / f"{1:020d}.seg"
    seg.write_bytes(b"JUNK" + seg.read_bytes()[4:])

    second = opened(tmp_path)
    assert not old_dir.exists()
    assert second.corrupt_frames == 1
    assert second.is_empty()
    assert len(list((tmp_path / "corrupt").iterdir())) == 1
    second.close()


CHILD = """
import sys, time
from pathlib import Path
from edge.delivery.spool import DiskSpool

spool = DiskSpool(Path(sys.argv[1]), segment_bytes=4096, fsync=False)
spool.open()
i = 0
while True:
    spool.append(b"child %d\\n" % i + b"y" * (i % 700), i % 5)
    print(i, flush=True)
    i += 1
    time.sleep(0.0005)
"""


def test_live_process_is_left_alone_and_claimed_after_sigkill(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        for _ in range(200):
            assert child.stdout.readline(), "the child spool process died"
        spool = opened(tmp_path)
        assert spool.claim_orphans() == 0
        assert spool.is_empty()
        assert spool.pending_batches == 0
        spool.append(b"parent", 9)
        assert drain(spool, 1) == [(b"parent", 9)]
        spool.append(b"parent again", 9)
    finally:
        child.send_signal(signal.SIGKILL)
        rest = child.communicate(timeout=30)[0]
    acked = [int(line) for line in rest.split(b"\n")[:-1]]
    last_acked = acked[-1] if acked else 199

    assert spool.claim_orphans() == 1
    expected_min = last_acked + 1
    assert spool.pending_batches >= expected_min + 1
    got = drain(spool)
    child_items, parent_items = got[:-1], got[-1:]
    assert parent_items == [(b"parent again", 9)]
    # Every acknowledged append is there, in order, without gaps or duplicates.
    assert len(child_items) >= expected_min
    for i, (batch, count) in enumerate(child_items):
        assert batch == b"child %d\n" % i + b"y" * (i % 700)
        assert count == i % 5
    assert spool.pending_batches == spool.pending_records == 0
    assert len(spool_dirs(tmp_path)) == 1
    spool.close()


def test_ten_thousand_small_appends_without_fsync(tmp_path: Path) -> None:
    spool = opened(tmp_path, segment_bytes=64 * 1024)
    started = time.perf_counter()
    for i in range(10_000):
        spool.append(b"%d\n" % i, 1)
    assert time.perf_counter() - started < 10
    assert spool.pending_batches == spool.pending_records == 10_000
    spool.close()

    again = opened(tmp_path, segment_bytes=64 * 1024)
    assert again.pending_batches == 10_000
    got = drain(again)
    assert [batch for batch, _ in got] == [b"%d\n" % i for i in range(10_000)]
    assert again.pending_bytes == 0
    again.close()


def test_closed_spool_refuses_use(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, fsync=False)
    with pytest.raises(RuntimeError):
        spool.append(b"x", 1)
    spool.open()
    spool.close()
    spool.close()
    with pytest.raises(RuntimeError):
        spool.peek()


append_op = st.tuples(st.just("append"), st.binary(max_size=200), st.integers(0, 2**32 - 1))
drain_op = st.tuples(st.just("drain"), st.integers(1, 4))
restart_op = st.tuples(st.just("restart"))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(st.one_of(append_op, append_op, drain_op, restart_op), max_size=50),
    segment_bytes=st.integers(1, 600),
)
def test_any_interleaving_drains_exactly_what_was_appended(
    ops: list[tuple[object, ...]], segment_bytes: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spool = opened(root, segment_bytes=segment_bytes)
        model: deque[tuple[bytes, int]] = deque()
        for op in ops:
            if op[0] == "append":
                batch, count = op[1], op[2]
                assert isinstance(batch, bytes)
                assert isinstance(count, int)
                spool.append(batch, count)
                model.append((batch, count))
            elif op[0] == "drain":
                steps = op[1]
                assert isinstance(steps, int)
                got = drain(spool, steps)
                assert got == [model.popleft() for _ in range(len(got))]
                assert len(got) == steps or not model
            else:
                spool.close()
                spool = opened(root, segment_bytes=segment_bytes)
            assert spool.pending_batches == len(model)
            assert spool.pending_records == sum(c for _, c in model)
            assert spool.pending_bytes == sum(frame_size(b) for b, _ in model)
        assert drain(spool) == list(model)
        assert spool.is_empty()
        spool.close()
        assert spool_dirs(root) == []
