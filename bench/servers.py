"""The servers under test: one process tree pinned to one core, CPU and RSS sampled."""

from __future__ import annotations

import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from devstack.processes import ManagedProcess, free_port, port_accepts


@dataclass
class Usage:
    """CPU (percent of one core, whole process tree) and RSS of the biggest process."""

    cpu_percent: float = 0.0
    rss_mb_max: float = 0.0
    rss_mb_samples: list[tuple[float, float]] = field(default_factory=list)


class PinnedServer:
    def __init__(self, name: str, argv: list[str], *, env: Mapping[str, str], core: int,
                 log_dir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.core = core
        self.process = ManagedProcess(
            ["taskset", "-c", str(core), *argv, "--port", str(self.port)],
            env=dict(env), log_path=log_dir / f"{name}-{self.port}.log", name=name)

    @classmethod
    def edge(cls, server: str, env: Mapping[str, str], core: int, log_dir: Path) -> PinnedServer:
        return cls("edge", [sys.executable, "-m", "edge.cli", "serve", "--workers", "1",
                            "--server", server], env=env, core=core, log_dir=log_dir)

    @classmethod
    def edge_without_delivery(cls, server: str, env: Mapping[str, str], core: int,
                              log_dir: Path) -> PinnedServer:
        return cls("edge-no-delivery", [sys.executable, "-m", "bench.ablation", "--server",
                                        server], env=env, core=core, log_dir=log_dir)

    @classmethod
    def baseline(cls, server: str, env: Mapping[str, str], core: int,
                 log_dir: Path) -> PinnedServer:
        return cls("baseline", [sys.executable, "-m", "bench.baseline", "--server", server],
                   env=env, core=core, log_dir=log_dir)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, ready_path: str | None = None, timeout: float = 60) -> PinnedServer:
        self.process.start(ready=lambda: port_accepts("127.0.0.1", self.port), timeout=timeout)
        if ready_path is not None:
            deadline = time.monotonic() + timeout
            while self.get(ready_path)[0] != 200:
                if time.monotonic() > deadline or not self.process.alive:
                    raise RuntimeError(f"{self.name} not ready:\n{self.process.tail(30)}")
                time.sleep(0.2)
        return self

    def stop(self) -> None:
        self.process.stop(timeout=60)

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as r:  # noqa: S310
                return r.status, r.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()
        except OSError:
            return 0, b""

    def _tree(self) -> list[psutil.Process]:
        assert self.process.pid is not None
        root = psutil.Process(self.process.pid)
        return [root, *root.children(recursive=True)]

    @contextmanager
    def usage(self, interval: float = 0.5) -> Iterator[Usage]:
        """Sample while the block runs: CPU over the whole block, RSS every ``interval``."""
        usage = Usage()
        procs = self._tree()
        cpu0 = sum(_cpu(p) for p in procs)
        t0 = time.monotonic()
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(interval):
                rss = max((_rss(p) for p in procs), default=0.0)
                usage.rss_mb_samples.append((time.monotonic() - t0, rss))
                usage.rss_mb_max = max(usage.rss_mb_max, rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            yield usage
        finally:
            stop.set()
            sampler.join()
            elapsed = time.monotonic() - t0
            usage.cpu_percent = 100 * (sum(_cpu(p) for p in procs) - cpu0) / elapsed


def _cpu(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return 0.0


def _rss(p: psutil.Process) -> float:
    try:
        return float(p.memory_info().rss) / 2**20
    except psutil.Error:
        return 0.0
