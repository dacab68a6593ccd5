"""The edge's configuration (edge.settings via contracts.settings.load_settings, cps-edge CLI)."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from contracts.keys import KeyRing, generate_ring
from contracts.settings import ConfigError, load_settings
from edge import cli
from edge.settings import EdgeSettings

ROOT = Path(__file__).resolve().parents[2]


class Env:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.mp = monkeypatch
        self.link_ring = generate_ring(("k1",), 32)
        self.cookie_ring = generate_ring(("c1",), 32)
        self.link_text = self.link_ring.to_text()
        self.cookie_text = self.cookie_ring.to_text()
        for name in list(os.environ):
            if name.upper().startswith("CPS_"):
                monkeypatch.delenv(name)
        self.set("CPS_LINK_KEYS", self.link_text)
        self.set("CPS_COOKIE_KEYS", self.cookie_text)
        self.set("CPS_ALLOWED_TARGET_HOSTS", "shop.example.com,*.mall.example")

    def set(self, name: str, value: str) -> None:
        self.mp.setenv(name, value)

    def unset(self, name: str) -> None:
        self.mp.delenv(name, raising=False)

    def secrets(self) -> list[str]:
        """Every secret in the environment, in the encodings a message could leak."""
        out = []
        for ring in (self.link_ring, self.cookie_ring):
            for kid in ring:
                raw = ring[kid]
                out += [base64.urlsafe_b64encode(raw).rstrip(b"=").decode(),
                        base64.b64encode(raw).decode(), raw.hex()]
        return out

    def assert_no_secret(self, text: str, *extra: str) -> None:
        for secret in [*self.secrets(), *extra]:
            assert secret not in text


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Env:
    return Env(monkeypatch)


def load() -> EdgeSettings:
    return load_settings(EdgeSettings)


def config_error() -> str:
    with pytest.raises(ConfigError) as info:
        load()
    return str(info.value)


# ------------------------------------------------------------------ valid configuration


def test_minimal_env_loads_with_documented_defaults(env: Env) -> None:
    s = load()
    assert isinstance(s.link_keys, KeyRing)
    assert list(s.link_keys) == ["k1"]
    assert s.link_keys["k1"] == env.link_ring["k1"]
    assert list(s.cookie_keys) == ["c1"]
    assert s.cookie_keys["c1"] == env.cookie_ring["c1"]
    s.allowed_target_hosts.check("https://shop.example.com/p")
    s.allowed_target_hosts.check("https://a.mall.example/")
    assert s.allowed_target_hosts.allow_http is False
    # The README's settings table.
    assert s.allow_http_targets is False
    assert s.redirect_path == "/c"
    assert s.safe_landing_url is None
    assert s.cookie_name == "cps_attr"
    assert s.cookie_domain is None
    assert s.cookie_secure is True
    assert s.attribution_window_s == 1_296_000 == 15 * 86400
    assert s.verdict_header is False
    assert s.duplicate_window_s == 30
    assert s.duplicate_max_entries == 524_288
    assert s.rate_limit_per_s == 100
    assert s.rate_limit_burst == 500
    assert s.forwarded_hops == 0
    assert s.bot_user_agents == ""
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.kafka_timeout_ms == 1000
    assert s.kafka_client_id == "cps-edge"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.redis_timeout_ms == 500
    assert s.spool_dir == Path("var/spool")
    assert s.spool_fsync is True
    assert s.buffer_max_events == 50_000
    assert s.batch_max_events == 2000
    assert s.probe_interval_ms == 1000
    assert s.shutdown_timeout_s == 20
    assert s.metrics_dir is None
    assert s.log_level == "info"


def test_every_setting_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in EdgeSettings.model_fields:
        assert f"| `CPS_{name.upper()}` |" in readme, name


def test_settings_are_frozen(env: Env) -> None:
    s = load()
    with pytest.raises(ValidationError):
        s.redirect_path = "/x"


def test_overrides_and_normalisation(env: Env) -> None:
    env.set("CPS_KAFKA_BOOTSTRAP", " kafka-1:9092 , kafka-2.internal:9093 ,")
    env.set("CPS_LOG_LEVEL", "DEBUG")
    env.set("CPS_ALLOW_HTTP_TARGETS", "true")
    env.set("CPS_COOKIE_DOMAIN", ".shop.example")
    env.set("CPS_SAFE_LANDING_URL", "https://shop.example.com/oops")
    env.set("CPS_REDIRECT_PATH", "/go/c-1")
    env.set("CPS_DUPLICATE_WINDOW_S", "0")
    env.set("CPS_RATE_LIMIT_PER_S", "0")
    env.set("CPS_FORWARDED_HOPS", "2")
    env.set("CPS_REDIS_URL", "rediss://cache:6380/1")
    env.set("CPS_METRICS_DIR", "/tmp/cps-metrics")
    s = load()
    assert s.kafka_bootstrap == "kafka-1:9092,kafka-2.internal:9093"
    assert s.log_level == "debug"
    assert s.allow_http_targets is True
    assert s.allowed_target_hosts.allow_http is True
    s.allowed_target_hosts.check("http://shop.example.com/")
    assert s.cookie_domain == ".shop.example"
    assert s.safe_landing_url == "https://shop.example.com/oops"
    assert s.redirect_path == "/go/c-1"
    assert s.duplicate_window_s == 0
    assert s.rate_limit_per_s == 0
    assert s.forwarded_hops == 2
    assert s.redis_url == "rediss://cache:6380/1"
    assert s.metrics_dir == Path("/tmp/cps-metrics")


def test_empty_optional_strings_mean_unset(env: Env) -> None:
    env.set("CPS_COOKIE_DOMAIN", "")
    env.set("CPS_SAFE_LANDING_URL", "")
    s = load()
    assert s.cookie_domain is None
    assert s.safe_landing_url is None


def test_rotated_rings_keep_order(env: Env) -> None:
    ring = generate_ring(("k2", "k1"), 48)
    env.set("CPS_LINK_KEYS", ring.to_text())
    cookies = generate_ring(("c2", "c1", "c0"), 16)
    env.set("CPS_COOKIE_KEYS", cookies.to_text())
    s = load()
    assert s.link_keys.active_kid == "k2"
    assert list(s.link_keys) == ["k2", "k1"]
    assert list(s.cookie_keys) == ["c2", "c1", "c0"]


def test_keyword_overrides(env: Env) -> None:
    env.unset("CPS_LINK_KEYS")
    s = load_settings(EdgeSettings, link_keys=env.link_text, redirect_path="/r")
    assert s.redirect_path == "/r"
    assert s.link_keys.active_kid == "k1"


# ------------------------------------------------------------------ invalid values

BAD_VALUES = [
    ("CPS_KAFKA_BOOTSTRAP", "not a host"),
    ("CPS_KAFKA_BOOTSTRAP", ""),
    ("CPS_KAFKA_BOOTSTRAP", "kafka:9092,kafka-2"),
    ("CPS_REDIS_URL", "http://x"),
    ("CPS_REDIRECT_PATH", "c"),
    ("CPS_REDIRECT_PATH", "/c?x=1"),
    ("CPS_COOKIE_NAME", "bad name"),
    ("CPS_COOKIE_NAME", "a;b"),
    ("CPS_COOKIE_DOMAIN", "Bad_Domain"),
    ("CPS_COOKIE_DOMAIN", "shop.example; Secure"),
    ("CPS_SAFE_LANDING_URL", "javascript:alert(1)"),
    ("CPS_SAFE_LANDING_URL", "https://user@shop.example.com/"),
    ("CPS_LOG_LEVEL", "loud"),
    ("CPS_COOKIE_SECURE", "maybe"),
    ("CPS_ALLOW_HTTP_TARGETS", "perhaps"),
    ("CPS_ALLOWED_TARGET_HOSTS", "https://shop.example.com/"),
    ("CPS_ALLOWED_TARGET_HOSTS", " , "),
    ("CPS_DUPLICATE_WINDOW_S", "-1"),
    ("CPS_DUPLICATE_MAX_ENTRIES", "0"),
    ("CPS_RATE_LIMIT_PER_S", "-5"),
    ("CPS_RATE_LIMIT_BURST", "0"),
    ("CPS_RATE_LIMIT_BURST", "-3"),
    ("CPS_FORWARDED_HOPS", "-1"),
    ("CPS_ATTRIBUTION_WINDOW_S", "-86400"),
    ("CPS_ATTRIBUTION_WINDOW_S", "0"),
    ("CPS_KAFKA_TIMEOUT_MS", "-100"),
    ("CPS_REDIS_TIMEOUT_MS", "0"),
    ("CPS_BUFFER_MAX_EVENTS", "-1"),
    ("CPS_BATCH_MAX_EVENTS", "0"),
    ("CPS_PROBE_INTERVAL_MS", "-1"),
    ("CPS_SHUTDOWN_TIMEOUT_S", "-20"),
    ("CPS_DUPLICATE_WINDOW_S", "thirty"),
    ("CPS_RATE_LIMIT_PER_S", "1.5"),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_invalid_value_names_the_variable(env: Env, name: str, value: str) -> None:
    env.set(name, value)
    message = config_error()
    assert message.startswith("invalid configuration")
    assert f"{name}:" in message
    # Only the bad variable is reported.
    assert len(re.findall(r"CPS_[A-Z_]+:", message)) == 1
    env.assert_no_secret(message)


def key_text(kid: str, size: int) -> tuple[str, str]:
    encoded = base64.urlsafe_b64encode(os.urandom(size)).rstrip(b"=").decode()
    return f"{kid}:{encoded}", encoded


@pytest.mark.parametrize("size", [8, 16, 31])
def test_short_link_key(env: Env, size: int) -> None:
    text, secret = key_text("k9", size)
    env.set("CPS_LINK_KEYS", text)
    message = config_error()
    assert "CPS_LINK_KEYS:" in message
    assert f"{size} bytes" in message
    assert "32" in message
    env.assert_no_secret(message, secret)


@pytest.mark.parametrize("size", [8, 20, 31, 33, 64])
def test_cookie_key_of_wrong_size(env: Env, size: int) -> None:
    text, secret = key_text("c9", size)
    env.set("CPS_COOKIE_KEYS", f"{env.cookie_text},{text}")
    message = config_error()
    assert "CPS_COOKIE_KEYS:" in message
    assert "'c9'" in message
    assert f"{size} bytes" in message
    env.assert_no_secret(message, secret)


@pytest.mark.parametrize("text", ["", " , ", "k1", "k1:***not-base64***", "bad kid!:" + "A" * 43,
                                  "k1:" + "A" * 43 + ",k1:" + "B" * 43])
def test_malformed_link_key_ring(env: Env, text: str) -> None:
    env.set("CPS_LINK_KEYS", text)
    message = config_error()
    assert "CPS_LINK_KEYS:" in message
    assert "A" * 43 not in message
    assert "B" * 43 not in message
    env.assert_no_secret(message)


def test_swapped_kid_and_secret_is_not_echoed(env: Env) -> None:
    secret = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    env.set("CPS_LINK_KEYS", f"{secret}:k1")
    message = config_error()
    assert "CPS_LINK_KEYS:" in message
    assert secret not in message


@pytest.mark.parametrize("name", ["CPS_LINK_KEYS", "CPS_COOKIE_KEYS", "CPS_ALLOWED_TARGET_HOSTS"])
def test_missing_required_setting(env: Env, name: str) -> None:
    env.unset(name)
    message = config_error()
    assert f"{name}: required but not set" in message
    env.assert_no_secret(message)


def test_several_errors_are_all_reported(env: Env) -> None:
    env.unset("CPS_LINK_KEYS")
    env.set("CPS_LOG_LEVEL", "loud")
    env.set("CPS_REDIS_URL", "http://x")
    message = config_error()
    assert "CPS_LINK_KEYS: required but not set" in message
    assert "CPS_LOG_LEVEL:" in message
    assert "CPS_REDIS_URL:" in message
    env.assert_no_secret(message)


def test_config_error_has_no_cause_or_context(env: Env) -> None:
    env.set("CPS_LOG_LEVEL", "loud")
    with pytest.raises(ConfigError) as info:
        load()
    # Raised "from None": a traceback would not show pydantic's error with its inputs.
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__ is True


# ------------------------------------------------------------------ secrets from files


def test_link_keys_file(env: Env, tmp_path: Path) -> None:
    ring = generate_ring(("kf",), 32)
    path = tmp_path / "link_keys"
    path.write_text(ring.to_text() + "\n", encoding="utf-8")
    env.unset("CPS_LINK_KEYS")
    env.set("CPS_LINK_KEYS_FILE", str(path))
    s = load()
    assert list(s.link_keys) == ["kf"]
    assert s.link_keys["kf"] == ring["kf"]


def test_cookie_keys_file(env: Env, tmp_path: Path) -> None:
    ring = generate_ring(("cf",), 24)
    path = tmp_path / "cookie_keys"
    path.write_text(ring.to_text(), encoding="utf-8")
    env.unset("CPS_COOKIE_KEYS")
    env.set("CPS_COOKIE_KEYS_FILE", str(path))
    assert load().cookie_keys["cf"] == ring["cf"]


def test_environment_value_wins_over_file(env: Env, tmp_path: Path) -> None:
    path = tmp_path / "link_keys"
    path.write_text(generate_ring(("kf",), 32).to_text(), encoding="utf-8")
    env.set("CPS_LINK_KEYS_FILE", str(path))
    assert list(load().link_keys) == ["k1"]


def test_unreadable_keys_file(env: Env, tmp_path: Path) -> None:
    env.unset("CPS_LINK_KEYS")
    env.set("CPS_LINK_KEYS_FILE", str(tmp_path / "missing"))
    message = config_error()
    assert message.startswith("CPS_LINK_KEYS_FILE: cannot read")
    assert "No such file" in message


def test_bad_key_in_file_names_the_variable(env: Env, tmp_path: Path) -> None:
    text, secret = key_text("k1", 8)
    path = tmp_path / "link_keys"
    path.write_text(text, encoding="utf-8")
    env.unset("CPS_LINK_KEYS")
    env.set("CPS_LINK_KEYS_FILE", str(path))
    message = config_error()
    assert "CPS_LINK_KEYS:" in message
    env.assert_no_secret(message, secret)


# ------------------------------------------------------------------ cps-edge check-config


def test_check_config_ok(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("configuration ok")
    assert "k1" in out
    assert "c1" in out
    assert "shop.example.com" in out
    assert err == ""
    env.assert_no_secret(out)


@pytest.mark.parametrize(("name", "value"), [
    ("CPS_LOG_LEVEL", "loud"),
    ("CPS_KAFKA_BOOTSTRAP", "not a host"),
    ("CPS_COOKIE_KEYS", "c1:" + base64.urlsafe_b64encode(bytes(20)).decode()),
    ("CPS_LINK_KEYS", None),
])
def test_check_config_bad(env: Env, capsys: pytest.CaptureFixture[str], name: str,
                          value: str | None) -> None:
    if value is None:
        env.unset(name)
    else:
        env.set(name, value)
    assert cli.main(["check-config"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("cps-edge: invalid configuration")
    assert f"{name}:" in err
    assert "Traceback" not in err
    env.assert_no_secret(err)


def fake_serve(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, ...]]:
    called: list[tuple[object, ...]] = []

    def serve(*args: object) -> int:
        called.append(args)
        return 0

    monkeypatch.setattr(cli, "serve", serve)
    return called


def test_serve_with_bad_config_exits_2_before_serving(
        env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    called = fake_serve(monkeypatch)
    env.set("CPS_REDIRECT_PATH", "c")
    assert cli.main(["serve"]) == 2
    assert called == []
    assert "CPS_REDIRECT_PATH:" in capsys.readouterr().err


def test_serve_rejects_zero_workers(env: Env, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    called = fake_serve(monkeypatch)
    assert cli.main(["serve", "--workers", "0"]) == 2
    assert called == []
    assert "--workers" in capsys.readouterr().err


def test_cli_usage_error_exits_2(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err
