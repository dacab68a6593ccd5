"""wrk as the load generator: many links, many buyers, a JSON summary per run.

Each request picks a random link, a random real-world User-Agent and a random
client address (sent as X-Forwarded-For; the edge runs with one trusted hop),
so the edge sees what a live stream produces: many distinct buyers, so no
duplicates and no rate limiting, and a hot set of links.

Fixed offered rates ("paced" runs) use wrk's ``delay()`` hook: every connection
waits an exponentially distributed time (mean ``connections / rate``) before
each request.  That is an open-loop *approximation*: a request stuck on a slow
answer delays only its own connection's next one (wrk is not wrk2, whose
corrected latencies this project cannot install), so latencies under stalls
are, if anything, understated; the achieved rate is reported next to the
offered one.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

_SCRIPT = r"""
math.randomseed(tonumber(os.getenv("WRK_SEED") or "%(seed)d"))
local paths = {%(paths)s}
local uas = {%(uas)s}
local interval_ms = %(interval_ms)f

request = function()
  local ip = string.format("10.%%d.%%d.%%d", math.random(0, 255), math.random(0, 255),
                           math.random(0, 255))
  return wrk.format("GET", paths[math.random(#paths)],
                    {["User-Agent"] = uas[math.random(#uas)], ["X-Forwarded-For"] = ip})
end

if interval_ms > 0 then
  delay = function()
    -- exponential gaps, rounded randomly so the mean survives wrk's whole-ms timer
    local x = -math.log(1 - math.random()) * interval_ms
    local d = math.floor(x)
    if math.random() < x - d then d = d + 1 end
    return d
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"bytes":%%d,' ..
    '"errors":{"connect":%%d,"read":%%d,"write":%%d,"status":%%d,"timeout":%%d},' ..
    '"latency_us":{"p50":%%d,"p90":%%d,"p99":%%d,"p999":%%d,"max":%%d,"mean":%%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    rps: float
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    offered_rps: float | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        return dict(self.__dict__)


def write_script(path: Path, paths: Sequence[str], user_agents: Sequence[str], *,
                 rate: float = 0.0, connections: int = 64, seed: int = 1) -> Path:
    """A wrk Lua script; ``rate`` > 0 paces the run at about that many requests/s."""
    def lua_list(items: Sequence[str]) -> str:
        return ",".join('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"' for s in items)

    interval_ms = connections / rate * 1000 if rate > 0 else 0.0
    path.write_text(_SCRIPT % {"seed": seed, "paths": lua_list(paths),
                               "uas": lua_list(user_agents), "interval_ms": interval_ms})
    return path


def run(url: str, script: Path, *, seconds: int, connections: int, core: int | None,
        offered_rps: float | None = None) -> WrkResult:
    """One wrk run.  Every run draws fresh buyers: a replayed sequence would make
    the edge answer ``duplicate`` to the same buyers on the same links."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s",
            str(script), url]
    if core is not None:
        argv = ["taskset", "-c", str(core), *argv]
    done = subprocess.run(argv, capture_output=True, text=True, check=False,
                          timeout=seconds + 60,
                          env={**os.environ, "LC_ALL": "C",
                               "WRK_SEED": str(int.from_bytes(os.urandom(4), "big"))})
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    data = orjson.loads(line.removeprefix("WRKJSON "))
    lat, err = data["latency_us"], data["errors"]
    seconds_run = data["duration_us"] / 1e6
    return WrkResult(
        requests=data["requests"], seconds=seconds_run, rps=data["requests"] / seconds_run,
        errors=sum(err.values()), p50_ms=lat["p50"] / 1000, p90_ms=lat["p90"] / 1000,
        p99_ms=lat["p99"] / 1000, p999_ms=lat["p999"] / 1000, max_ms=lat["max"] / 1000,
        offered_rps=offered_rps)
