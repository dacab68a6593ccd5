"""``cps-push`` endpoints and deliveries commands against a real ledger; bad input gives a
message and exit 2, never a traceback."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import Engine

from push_worker import store
from push_worker.cli import main
from tests.integration.db import ledger_engine, ledger_url  # noqa: F401 (fixtures)
from tests.integration.push_harness import RING, enqueue, events_for

pytestmark = pytest.mark.integration


@pytest.fixture
def cli(ledger_engine: Engine, ledger_url: str,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> Engine:
    monkeypatch.setenv("CPS_DATABASE_URL", ledger_url)
    monkeypatch.setenv("CPS_PUSH_SECRET_KEYS", RING.to_text())
    return ledger_engine


def _endpoint_id(out: str) -> str:
    found = re.search(r"endpoint (wh_[0-9a-f]+)", out)
    assert found is not None
    return found.group(1)


def test_endpoint_lifecycle(cli: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["endpoints", "add", "--promoter", "p-1", "--url",
                 "https://hooks.example.com/cps"]) == 0
    out = capsys.readouterr().out
    endpoint_id = _endpoint_id(out)
    secret = re.search(r"whsec_\S+", out)
    assert secret is not None
    assert main(["endpoints", "list"]) == 0
    listed = capsys.readouterr().out
    assert endpoint_id in listed
    assert secret.group(0) not in listed  # shown once, never listed
    assert main(["endpoints", "disable", endpoint_id, "--reason", "maintenance"]) == 0
    assert main(["endpoints", "list", "--json"]) == 0
    assert '"disabled_reason": "maintenance"' in capsys.readouterr().out
    assert main(["endpoints", "enable", endpoint_id]) == 0
    assert main(["endpoints", "rotate-secret", endpoint_id, "--grace-hours", "1"]) == 0
    rotated = capsys.readouterr().out
    assert "whsec_" in rotated
    assert secret.group(0) not in rotated


def test_deliveries_list_log_and_replay(cli: Engine,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["endpoints", "add", "--promoter", "p-1", "--url", "http://127.0.0.1:9/h",
                 "--dev"]) == 0
    capsys.readouterr()
    events = events_for("p-1", 2)
    enqueue(cli, events)
    with cli.begin() as conn:
        conn.execute(store.D.update().where(store.D.c.event_id == events[0].event_id)
                     .values(status="dead", attempts=8))
    assert main(["deliveries", "list", "--dead"]) == 0
    out = capsys.readouterr().out
    assert events[0].event_id in out
    assert events[1].event_id not in out
    assert main(["deliveries", "log", events[1].event_id]) == 0
    assert "not attempted yet" in capsys.readouterr().out
    assert main(["deliveries", "replay", "--all-dead"]) == 0
    assert "1 dead delivery due again" in capsys.readouterr().out
    assert main(["deliveries", "list", "--dead", "--json"]) == 0
    assert capsys.readouterr().out.strip() == "[]"


@pytest.mark.parametrize(("argv", "message"), [
    (["endpoints", "add", "--promoter", "p-1", "--url", "http://127.0.0.1:9/h"], "--dev"),
    (["endpoints", "add", "--channel", "c", "--url", "http://example.com/"], "https://"),
    (["endpoints", "disable", "wh_missing"], "no webhook endpoint"),
    (["endpoints", "rotate-secret", "wh_missing"], "no webhook endpoint"),
    (["deliveries", "log", "evt_missing"], "no delivery"),
    (["deliveries", "replay", "12345"], "no dead delivery"),
])
def test_bad_input_is_a_message(cli: Engine, capsys: pytest.CaptureFixture[str],
                                argv: list[str], message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_missing_keys_name_the_variable(cli: Engine, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CPS_PUSH_SECRET_KEYS")
    assert main(["endpoints", "add", "--promoter", "p-1", "--url", "https://x.example/"]) == 2
    assert "CPS_PUSH_SECRET_KEYS" in capsys.readouterr().err
    assert main(["serve"]) == 2
    assert "CPS_PUSH_SECRET_KEYS: required but not set" in capsys.readouterr().err


def test_a_bad_setting_stops_serve(cli: Engine, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CPS_PUSH_RETRY_SCHEDULE_S", "5,soon")
    assert main(["serve"]) == 2
    assert "CPS_PUSH_RETRY_SCHEDULE_S" in capsys.readouterr().err
