"""Prometheus metrics that stay coherent across worker processes and cost nanoseconds.

Every worker keeps its metrics as int64 slots in its own memory-mapped file
``<dir>/<pid>.metrics``; a hot-path increment is a plain memory write, with no
lock, because each file has exactly one writer.  Whichever worker answers a
scrape reads all files and sums them, so ``/metrics`` means the whole edge
whatever worker it hits.  Counters and histograms of exited workers keep
counting (counters must never go backwards); gauges count only for live ones.

The set of metrics and label values is fixed at import time, so every
worker has the same slot layout; a layout hash in each file's header keeps
files of another code version out of the sums.
"""

from __future__ import annotations

import bisect
import hashlib
import mmap
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

_MAGIC = b"CPSMET01"
_HEADER = struct.Struct("<8s8sq")  # magic, layout hash, pid
_SLOT = 8

GaugeMode = Literal["sum", "max"]


@dataclass
class _Metric:
    name: str
    help: str
    kind: Literal["counter", "gauge", "histogram"]
    offset: int
    label_name: str | None = None
    label_values: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    gauge_mode: GaugeMode = "sum"

    @property
    def width(self) -> int:
        if self.kind == "histogram":
            return len(self.buckets) + 2  # buckets (+Inf included), count, sum in ns
        return max(1, len(self.label_values))


@dataclass
class Registry:
    """Declares metrics (at import time) and owns this process's slot array."""

    _metrics: list[_Metric] = field(default_factory=list)
    _size: int = 0
    slots: memoryview = field(default_factory=lambda: memoryview(bytearray(_SLOT)).cast("q"))
    _mmap: mmap.mmap | None = None
    _dir: Path | None = None

    def _add(self, metric: _Metric) -> _Metric:
        self._metrics.append(metric)
        self._size += metric.width
        return metric

    def counter(self, name: str, help: str, label: str | None = None,
                values: Sequence[str] = ()) -> Counter:
        m = self._add(_Metric(name, help, "counter", self._size, label, tuple(values)))
        return Counter(self, m)

    def gauge(self, name: str, help: str, mode: GaugeMode = "sum", label: str | None = None,
              values: Sequence[str] = ()) -> Gauge:
        m = self._add(_Metric(name, help, "gauge", self._size, label, tuple(values),
                              gauge_mode=mode))
        return Gauge(self, m)

    def histogram(self, name: str, help: str, buckets: Sequence[float]) -> Histogram:
        bounds = (*tuple(sorted(buckets)), float("inf"))
        m = self._add(_Metric(name, help, "histogram", self._size, buckets=bounds))
        return Histogram(self, m)

    @property
    def layout_hash(self) -> bytes:
        text = repr([(m.name, m.kind, m.label_values, m.buckets) for m in self._metrics])
        return hashlib.sha256(text.encode()).digest()[:8]

    def open(self, directory: Path | None) -> None:
        """Back the slots with a file in ``directory`` (multi-worker) or plain memory."""
        self.close()
        size = _HEADER.size + self._size * _SLOT
        if directory is None:
            buf = bytearray(size)
            _HEADER.pack_into(buf, 0, _MAGIC, self.layout_hash, os.getpid())
            self.slots = memoryview(buf)[_HEADER.size:].cast("q")
            return
        directory.mkdir(parents=True, exist_ok=True)
        # The random part keeps a recycled pid from truncating a dead worker's
        # counters, which must keep counting.
        path = directory / f"{os.getpid()}-{os.urandom(4).hex()}.metrics"
        with open(path, "w+b") as f:
            f.truncate(size)
            self._mmap = mmap.mmap(f.fileno(), size)
        _HEADER.pack_into(self._mmap, 0, _MAGIC, self.layout_hash, os.getpid())
        self.slots = memoryview(self._mmap)[_HEADER.size:].cast("q")
        self._dir = directory

    def close(self) -> None:
        if self._mmap is not None:
            self.slots.release()
            self._mmap.close()
            self._mmap = None
        self._dir = None
        self.slots = memoryview(bytearray(self._size * _SLOT or _SLOT)).cast("q")

    def _snapshots(self) -> Iterable[tuple[bool, Sequence[int]]]:
        """(process alive, slot values) for every process's file, this one included."""
        if self._dir is None:
            yield True, self.slots.tolist()
            return
        want = self.layout_hash
        for path in sorted(self._dir.glob("*.metrics")):
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if len(data) < _HEADER.size:
                continue
            magic, layout, pid = _HEADER.unpack_from(data, 0)
            if magic != _MAGIC or layout != want:
                continue
            values = memoryview(data)[_HEADER.size:].cast("q")
            if len(values) != self._size:
                continue
            yield _alive(pid), values.tolist()

    def render(self) -> bytes:
        """Prometheus text exposition (format 0.0.4) of the sum over all workers."""
        totals = [0] * self._size
        live_sums = [0] * self._size
        maxima = [0] * self._size
        for alive, values in self._snapshots():
            for i, v in enumerate(values):
                totals[i] += v
                if alive:
                    live_sums[i] += v
                    maxima[i] = max(maxima[i], v)
        out: list[str] = []
        for m in self._metrics:
            out.append(f"# HELP {m.name} {m.help}\n# TYPE {m.name} {m.kind}\n")
            if m.kind == "histogram":
                _render_histogram(out, m, totals)
                continue
            source = totals
            if m.kind == "gauge":
                source = live_sums if m.gauge_mode == "sum" else maxima
            if not m.label_values:
                out.append(f"{m.name} {source[m.offset]}\n")
                continue
            for i, value in enumerate(m.label_values):
                out.append(f'{m.name}{{{m.label_name}="{value}"}} {source[m.offset + i]}\n')
        return "".join(out).encode()


def _render_histogram(out: list[str], m: _Metric, totals: list[int]) -> None:
    cumulative = 0
    for i, bound in enumerate(m.buckets):
        cumulative += totals[m.offset + i]
        le = "+Inf" if bound == float("inf") else repr(bound)
        out.append(f'{m.name}_bucket{{le="{le}"}} {cumulative}\n')
    n = len(m.buckets)
    out.append(f"{m.name}_count {totals[m.offset + n]}\n")
    out.append(f"{m.name}_sum {totals[m.offset + n + 1] / 1e9}\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Counter:
    """A counter, optionally with one label of fixed values; ``index`` resolves a label once."""

    __slots__ = ("_m", "_r")

    def __init__(self, registry: Registry, metric: _Metric) -> None:
        self._r = registry
        self._m = metric

    def index(self, label_value: str | None = None) -> int:
        """The slot to bump directly on hot paths: ``registry.slots[i] += 1``."""
        if label_value is None:
            if self._m.label_values:
                raise ValueError(f"{self._m.name} needs a {self._m.label_name} label value")
            return self._m.offset
        return self._m.offset + self._m.label_values.index(label_value)

    def inc(self, n: int = 1, label_value: str | None = None) -> None:
        self._r.slots[self.index(label_value)] += n

    def value(self, label_value: str | None = None) -> int:
        return int(self._r.slots[self.index(label_value)])


class Gauge(Counter):
    __slots__ = ()

    def set(self, value: int, label_value: str | None = None) -> None:
        self._r.slots[self.index(label_value)] = value


class Histogram:
    """Latency histogram with integer-nanosecond observations."""

    __slots__ = ("_bounds_ns", "_count", "_m", "_r", "_sum")

    def __init__(self, registry: Registry, metric: _Metric) -> None:
        self._r = registry
        self._m = metric
        self._bounds_ns = [round(b * 1e9) for b in metric.buckets[:-1]]
        self._count = metric.offset + len(metric.buckets)
        self._sum = self._count + 1

    def observe_ns(self, ns: int) -> None:
        slots = self._r.slots
        slots[self._m.offset + bisect.bisect_left(self._bounds_ns, ns)] += 1
        slots[self._count] += 1
        slots[self._sum] += ns
