"""``./run.sh`` (``cps-dev up``): the whole pipeline from one command, as its demo says.

Starts ``cps-dev up`` in a scratch directory, clicks the demo link it prints as a
browser would, sends the demo order carrying the cookie with ``cps-dev order``,
and waits for ``cps-dev decisions`` to show the CPS decision for that click;
then SIGTERM stops everything cleanly.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from devstack.processes import ManagedProcess, free_port
from tests.integration.edge_harness import get_request, path_of, raw_request

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0"


def cps_dev(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CPS_")}
    return subprocess.run([sys.executable, "-m", "devstack.cli", *args], cwd=cwd, env={
        **env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60,
        check=False)


def cps_billing(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CPS_")}
    url = f"sqlite:///{cwd / '.cps-dev' / 'ledger.db'}"
    return subprocess.run([sys.executable, "-m", "billing_batch.cli", "--database-url", url,
                           *args], cwd=cwd, env={**env, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=60, check=False)


async def _bill_and_charge(cwd: Path, up: ManagedProcess) -> None:
    """The demo's step 5: a billing run freezes the commission (the demo shop's 20 % of the
    demo order's 9900 is 1980) and requests the charge; the charge service and the funds
    stand-in answer it."""
    as_of = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 1))
    billed = cps_billing(cwd, "run", "--as-of", as_of, "--json")
    assert billed.returncode == 0, billed.stderr
    summary = orjson.loads(billed.stdout)
    assert summary["lines_accrued"] == 1
    assert summary["amounts"]["freeze"] == 1980
    deadline = time.monotonic() + 60
    while True:
        listed = cps_billing(cwd, "charges", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        (charge,) = orjson.loads(listed.stdout)
        if charge["status"] == "charged":
            break
        assert time.monotonic() < deadline, f"charge still {charge}; log:\n{up.tail(60)}"
        await asyncio.sleep(0.5)
    assert charge["amount_minor"] == 1980
    assert cps_billing(cwd, "reconcile").returncode == 0


async def test_the_demo_from_click_to_decision(tmp_path: Path) -> None:
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CPS_")},
           "PYTHONPATH": str(REPO)}
    up = ManagedProcess([sys.executable, "-m", "devstack.cli", "up", "--port", str(port)],
                        log_path=tmp_path / "up.log", env=env, cwd=tmp_path, name="cps-dev")
    up.start(ready=lambda: "Ctrl-C stops everything" in up.log_path.read_text(), timeout=120)
    try:
        text = up.log_path.read_text()
        link = re.search(r"demo link .*\n  (\S+)", text)
        assert link is not None, text
        response = await raw_request(port, get_request(path_of(link.group(1)), [
            ("User-Agent", BROWSER)]))
        assert response is not None
        assert response.verdict == "valid"
        cookie = response.headers["set-cookie"].split(";", 1)[0].split("=", 1)[1]
        sent = cps_dev(tmp_path, "order", "--token", cookie)
        assert sent.returncode == 0, sent.stderr
        deadline = time.monotonic() + 60
        decisions: list[dict[str, object]] = []
        while not decisions:
            assert time.monotonic() < deadline, f"no decision; log:\n{up.tail(60)}"
            shown = cps_dev(tmp_path, "decisions")
            assert shown.returncode == 0, shown.stderr
            decisions = [orjson.loads(line) for line in shown.stdout.splitlines() if line]
            await asyncio.sleep(0.5)
        (decision,) = decisions
        assert decision["order_id"] == "demo-order-1"
        assert decision["attribution_type"] == "cps"
        assert decision["evidence"] == "token"
        assert decision["click_id"] == response.click_id
        assert decision["promoter_id"] == "demo-promoter"
        await _bill_and_charge(tmp_path, up)
    finally:
        code = up.stop(timeout=60)
    assert code == 0, up.tail(40)
    assert "stopping broker and redis" in up.log_path.read_text()
