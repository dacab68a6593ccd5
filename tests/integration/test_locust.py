"""The locust scenarios (``bench/locustfile.py``) against a real edge, headless.

A short steady run must pass, and what locust counted per kind must match
the edge's own verdict counters; runs that break a threshold must exit 1 and
say why.  The User-Agent lists are checked against the edge's bot filter.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from devstack.stack import LocalStack
from edge.requester import RequesterFilter
from tests.integration.edge_harness import ALLOWED, EdgeProcess, Keys

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = ROOT / "bench" / "locustfile.py"
LOCUST = Path(sys.executable).parent / "locust"
USERS = 20
# Kind (locust request name) -> the edge verdict it must produce.
KIND_VERDICTS = {"valid": "valid", "duplicate": "duplicate", "expired": "expired",
                 "tampered": "bad_signature", "bot": "bot", "head": "bot"}
EDGE_VERDICTS = ("valid", "duplicate", "expired", "bot", "bad_signature", "malformed",
                 "unknown_key", "target_not_allowed", "rate_limited")
# Tokens of in-app browsers (WeChat, Douyin, Kuaishou, Xiaohongshu, Taobao/Tmall/Alipay,
# Weibo, QQ, Pinduoduo, Toutiao, JD, Bilibili, Baidu).
IN_APP = ("MicroMessenger", "aweme", "Kwai", "ksNebula", "discover/", "XiaoHongShu", "AliApp(",
          "Weibo (", "QQ/", "phh_android", "NewsArticle", "jdapp", "BiliApp", "baiduboxapp")
# Rare kinds more often than the defaults, so that 8 s give each of them dozens.
MIX = {"CPS_LOAD_SHARE_VALID": "50", "CPS_LOAD_SHARE_DUPLICATE": "15",
       "CPS_LOAD_SHARE_EXPIRED": "10", "CPS_LOAD_SHARE_TAMPERED": "10",
       "CPS_LOAD_SHARE_BOT": "10", "CPS_LOAD_SHARE_HEAD": "5"}


def run_locust(edge: EdgeProcess, keys: Keys, out: Path, *, duration: int,
               **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CPS_")}
    env.update(keys.env())
    env.update({"CPS_ALLOWED_TARGET_HOSTS": ALLOWED, "CPS_LOAD_SHAPE": "steady",
                "CPS_LOAD_PEAK_USERS": str(USERS), "CPS_LOAD_DURATION_S": str(duration),
                "CPS_LOAD_RAMP_S": "1", "CPS_LOAD_PROMOTERS": "20", "CPS_LOAD_LINKS": "200",
                "CPS_LOAD_MAX_P99_MS": "2000",  # a loaded 2-core box; p99 is wrk's job
                **MIX, **settings})
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [str(LOCUST), "-f", str(LOCUSTFILE), "--headless", "--host", edge.url,
         "--csv", str(out / "locust"), "--csv-full-history", "--html", str(out / "locust.html"),
         "--only-summary"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=duration + 40, check=False)


def stats_rows(out: Path) -> dict[str, dict[str, str]]:
    with (out / "locust_stats.csv").open(newline="") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def verdict_counts(edge: EdgeProcess) -> dict[str, float]:
    m = edge.metrics()
    return {v: m.get(f'cps_edge_requests_total{{verdict="{v}"}}', 0.0) for v in EDGE_VERDICTS}


def test_user_agent_lists_agree_with_the_edge_bot_filter() -> None:
    flt = RequesterFilter()
    buyers = (ROOT / "bench" / "user_agents.txt").read_text(encoding="utf-8").splitlines()
    bots = (ROOT / "bench" / "bot_user_agents.txt").read_text(encoding="utf-8").splitlines()
    buyers, bots = [b for b in buyers if b.strip()], [b for b in bots if b.strip()]

    assert [ua for ua in buyers if flt.bot_reason(ua.encode()) is not None] == []
    assert [ua for ua in bots if flt.bot_reason(ua.encode()) is None] == []
    assert len(set(buyers)) == len(buyers)
    assert len(set(bots)) == len(bots) >= 10
    assert sum(any(app in ua for app in IN_APP) for ua in buyers) >= 25
    for app in ("MicroMessenger", "aweme", "Kwai", "XiaoHongShu", "AliApp(TB", "Weibo"):
        assert any(app in ua for ua in buyers), app
    for browser in ("Version/17.5 Mobile/15E148 Safari", "Mobile Safari/537.36",
                    "Windows NT 10.0", "Macintosh"):
        assert any(browser in ua and not any(a in ua for a in IN_APP) for ua in buyers)
    for fetcher in ("Googlebot", "bingbot", "facebookexternalhit", "Twitterbot", "Slackbot",
                    "TelegramBot", "WhatsApp", "Discordbot", "LinkedInBot", "Applebot",
                    "Bytespider"):
        assert any(fetcher in ua for ua in bots), fetcher


def test_steady_run_passes_and_the_edge_counts_every_kind(
        stack: LocalStack, keys: Keys, edge_factory: Callable[..., EdgeProcess],
        tmp_path: Path) -> None:
    edge = edge_factory(stack).start()
    before = verdict_counts(edge)

    run = run_locust(edge, keys, tmp_path / "out", duration=8)

    assert run.returncode == 0, run.stderr[-4000:]
    assert "load test passed" in run.stderr
    for name in ("locust_stats.csv", "locust_stats_history.csv", "locust_failures.csv",
                 "locust_exceptions.csv", "locust.html"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    rows = stats_rows(tmp_path / "out")
    sent = {kind: int(rows[kind]["Request Count"]) for kind in KIND_VERDICTS}
    assert {kind: int(rows[kind]["Failure Count"]) for kind in KIND_VERDICTS} == \
        dict.fromkeys(KIND_VERDICTS, 0)
    assert all(n > 0 for n in sent.values()), sent
    assert rows["head"]["Type"] == "HEAD"

    grew = {v: after - before[v] for v, after in verdict_counts(edge).items()}
    expected = dict.fromkeys(EDGE_VERDICTS, 0)
    for kind, verdict in KIND_VERDICTS.items():
        expected[verdict] += sent[kind]
    # The edge saw every request locust recorded, and at most one more per user:
    # the requests in flight when locust stopped its users.
    assert all(grew[v] >= expected[v] for v in EDGE_VERDICTS), (grew, expected)
    assert 0 <= sum(grew.values()) - sum(expected.values()) <= USERS, (grew, expected)
    assert grew["rate_limited"] == grew["malformed"] == grew["unknown_key"] == 0


def test_broken_thresholds_fail_the_run_and_say_why(
        stack: LocalStack, keys: Keys, edge_factory: Callable[..., EdgeProcess],
        tmp_path: Path) -> None:
    edge = edge_factory(stack).start()

    # No click is answered within 0 ms: the p99 threshold fails an otherwise clean run.
    slow = run_locust(edge, keys, tmp_path / "p99", duration=3, CPS_LOAD_MAX_P99_MS="0")

    assert slow.returncode == 1, slow.stderr[-4000:]
    assert "load test FAILED: p99 response time of valid clicks" in slow.stderr
    assert int(stats_rows(tmp_path / "p99")["Aggregated"]["Failure Count"]) == 0

    # An edge that is not told about the proxy hop sees every buyer as 127.0.0.1
    # and rate-limits them: a set-up error, reported as such.
    blind = edge_factory(stack, env={"CPS_FORWARDED_HOPS": "0", "CPS_RATE_LIMIT_PER_S": "1",
                                     "CPS_RATE_LIMIT_BURST": "5"}).start()
    limited = run_locust(blind, keys, tmp_path / "429", duration=3)

    assert limited.returncode == 1, limited.stderr[-4000:]
    assert "answers were 429 rate limited: the load test set-up is wrong" in limited.stderr
    assert "load test FAILED: failure ratio" in limited.stderr
    failures = (tmp_path / "429" / "locust_failures.csv").read_text()
    assert "HTTP 429 rate limited: a load-test set-up error" in failures
    assert verdict_counts(blind)["rate_limited"] > 0
