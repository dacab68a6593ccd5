"""The charge service's pure edges: reading a batch of result records, settings, the parser."""

from __future__ import annotations

import argparse

import pytest

from billing_batch.charge_service import (
    ChargeSettings,
    ResultRecord,
    add_charge_commands,
    parse_results,
)
from contracts.charges import ChargeResult, ChargeStatus
from contracts.settings import ConfigError, load_settings

GOOD = ChargeResult("o1:1", "o1", ChargeStatus.CHARGED, "", 1_700_000_000_000)


def test_usable_results_keep_their_order_and_bad_records_say_why() -> None:
    nul = GOOD.to_json().replace(b'"reason":""', b'"reason":"\\u0000"')
    records = [ResultRecord(GOOD.to_json(), 0, 1), ResultRecord(b"[]", 0, 2),
               ResultRecord(nul, 1, 3), ResultRecord(GOOD.to_json().replace(b"o1:1", b"o1:2"))]
    results, bad = parse_results(records)
    assert [r.charge_id for r in results] == ["o1:1", "o1:2"]
    assert [(record.offset, err.field) for record, err in bad] == [(2, "(message)"),
                                                                    (3, "(message)")]
    assert "NUL" in str(bad[1][1])


def test_settings_name_the_bad_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPS_KAFKA_BOOTSTRAP", "kafka:9092")
    monkeypatch.setenv("CPS_CHARGE_MAX_ATTEMPTS", "5")
    settings = load_settings(ChargeSettings)
    assert (settings.kafka_bootstrap, settings.charge_max_attempts) == ("kafka:9092", 5)
    monkeypatch.setenv("CPS_CHARGE_MAX_ATTEMPTS", "0")
    monkeypatch.setenv("CPS_DATABASE_URL", "mysql://db")
    with pytest.raises(ConfigError) as caught:
        load_settings(ChargeSettings)
    assert "CPS_CHARGE_MAX_ATTEMPTS" in str(caught.value)
    assert "CPS_DATABASE_URL: unsupported database 'mysql'" in str(caught.value)


def test_the_commands_mount_under_a_parent_that_has_the_database_option() -> None:
    parser = argparse.ArgumentParser(prog="cps-billing")
    parser.add_argument("--database-url", default=None)
    add_charge_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["--database-url", "sqlite:///a.db", "charges", "list",
                              "--failed"])
    assert (args.database_url, args.failed, args.json) == ("sqlite:///a.db", True, False)
    args = parser.parse_args(["charges", "retry", "o1", "--database-url", "sqlite:///b.db"])
    assert (args.order_id, args.database_url) == ("o1", "sqlite:///b.db")
    assert callable(parser.parse_args(["charges", "serve"]).handler)
    with pytest.raises(SystemExit):
        parser.parse_args(["charges"])
