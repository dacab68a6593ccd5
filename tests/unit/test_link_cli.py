"""The ``cps-link`` command line (contracts.link_cli.main)."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import orjson
import pytest

from contracts.keys import KeyRing, generate_ring
from contracts.link_cli import DEFAULT_BASE_URL, main
from contracts.links import inspect_link
from contracts.targets import AllowList
from tests.unit.test_targets import HOSTILE_UNICODE

SECRET = bytes(range(32))
KEYS = "k1:" + base64.urlsafe_b64encode(SECRET).decode().rstrip("=")
HOSTS = "shop.example.com,*.example.net"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CPS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CPS_LINK_KEYS", KEYS)
    monkeypatch.setenv("CPS_ALLOWED_TARGET_HOSTS", HOSTS)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def mint(capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    code, out, err = run(capsys, "mint", "--promoter", "prom1", "--channel", "chan1",
                         "--target", "https://shop.example.com/landing", *extra)
    assert code == 0, err
    assert err == ""
    lines = out.strip().splitlines()
    assert len(lines) == 1
    return lines[0]


def assert_clean_error(err: str) -> None:
    assert err.startswith("cps-link: ")
    assert "Traceback" not in err
    assert base64.urlsafe_b64encode(SECRET).decode().rstrip("=") not in err


# ---------------------------------------------------------------- mint / inspect


def test_mint_prints_a_link_that_inspect_reports_valid(capsys: pytest.CaptureFixture[str]) -> None:
    url = mint(capsys)
    assert url.startswith(DEFAULT_BASE_URL + "?p=prom1&ch=chan1&t=")
    code, out, _ = run(capsys, "inspect", url)
    assert code == 0
    assert out.startswith("verdict: valid (ok)")
    assert "promoter: prom1" in out
    assert "channel:  chan1" in out
    assert "target:   https://shop.example.com/landing" in out
    assert "key id:   k1" in out
    # The library agrees.
    ring = KeyRing((("k1", SECRET),))
    assert inspect_link(url, ring, AllowList(HOSTS.split(","))).verdict.value == "valid"


def test_mint_all_options_and_inspect_json(capsys: pytest.CaptureFixture[str]) -> None:
    url = mint(capsys, "--position", "pos1", "--shop", "shop1", "--product", "prod1",
               "--sub", "a b", "--sub", "", "--sub", "ü", "--expires-at", "4000000000",
               "--base-url", "https://edge.example/c")
    assert url.startswith("https://edge.example/c?")
    code, out, _ = run(capsys, "inspect", url, "--json")
    assert code == 0
    doc = orjson.loads(out)
    assert doc == {
        "verdict": "valid", "reason": "ok", "kid": "k1",
        "link": {"promoter_id": "prom1", "channel_id": "chan1",
                 "target": "https://shop.example.com/landing", "expires_at": 4_000_000_000,
                 "position_id": "pos1", "shop_id": "shop1", "product_id": "prod1",
                 "sub_ids": ["a b", "", "ü"]},
    }
    code, out, _ = run(capsys, "inspect", url)
    assert "position: pos1" in out
    assert "shop:     shop1" in out
    assert "product:  prod1" in out
    assert "sub-ids:  ['a b', '', 'ü']" in out
    assert "expires:  2096-10-02 07:06:40 UTC" in out


def test_ttl_sets_expiry(capsys: pytest.CaptureFixture[str]) -> None:
    before = int(time.time())
    url = mint(capsys, "--ttl", "120", "--base-url", "https://edge.example/c")
    _, out, _ = run(capsys, "inspect", url, "--json")
    exp = orjson.loads(out)["link"]["expires_at"]
    assert before + 120 <= exp <= int(time.time()) + 120


def test_default_ttl_is_30_days(capsys: pytest.CaptureFixture[str]) -> None:
    before = int(time.time())
    url = mint(capsys)
    _, out, _ = run(capsys, "inspect", url, "--json")
    exp = orjson.loads(out)["link"]["expires_at"]
    assert before + 30 * 86400 <= exp <= int(time.time()) + 30 * 86400


def test_base_url_from_environment(capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPS_LINK_BASE_URL", "https://go.example/r")
    assert mint(capsys).startswith("https://go.example/r?p=")


def test_inspect_tampered_link_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    url = mint(capsys)
    tampered = url.replace("p=prom1", "p=prom2")
    code, out, _ = run(capsys, "inspect", tampered)
    assert code == 1
    assert out.startswith("verdict: bad_signature (")
    assert "promoter:" not in out  # nothing from an unverified link is echoed as fact
    code, out, _ = run(capsys, "inspect", tampered, "--json")
    assert code == 1
    doc = orjson.loads(out)
    assert doc["verdict"] == "bad_signature"
    assert doc["link"] is None
    assert doc["kid"] is None


@pytest.mark.parametrize(
    ("mutate", "verdict"),
    [
        (lambda u: u.replace("&kid=k1", "&kid=k9"), "unknown_key"),
        (lambda u: u.rpartition("&sig=")[0], "malformed"),
        (lambda u: u + "&utm=x", "malformed"),
        (lambda u: "not a link", "malformed"),
        (lambda u: u.replace("p=prom1", "p=pröm1"), "malformed"),
    ],
    ids=["unknown_key", "no_sig", "extra_param", "garbage", "non_ascii"],
)
def test_inspect_other_verdicts_exit_1(capsys: pytest.CaptureFixture[str], mutate: object,
                                       verdict: str) -> None:
    url = mint(capsys)
    code, out, _ = run(capsys, "inspect", mutate(url), "--json")  # type: ignore[operator]
    assert code == 1
    assert orjson.loads(out)["verdict"] == verdict


def test_inspect_expired_link_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    url = mint(capsys, "--expires-at", str(int(time.time()) - 5))
    code, out, _ = run(capsys, "inspect", url, "--json")
    assert code == 1
    doc = orjson.loads(out)
    assert doc["verdict"] == "expired"
    assert doc["link"]["promoter_id"] == "prom1"


def test_inspect_off_list_target_exits_1(capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPS_ALLOWED_TARGET_HOSTS", "shop.example.com,evil.example.org")
    code, out, err = run(capsys, "mint", "--promoter", "p", "--channel", "c",
                         "--target", "https://evil.example.org/")
    assert code == 0, err
    monkeypatch.setenv("CPS_ALLOWED_TARGET_HOSTS", "shop.example.com")
    code, out2, _ = run(capsys, "inspect", out.strip(), "--json")
    assert code == 1
    assert orjson.loads(out2)["verdict"] == "target_not_allowed"


def test_http_targets_follow_cps_allow_http_targets(capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    args = ("mint", "--promoter", "p", "--channel", "c", "--target", "http://shop.example.com/")
    code, _, err = run(capsys, *args)
    assert code == 2
    assert_clean_error(err)
    monkeypatch.setenv("CPS_ALLOW_HTTP_TARGETS", "true")
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert run(capsys, "inspect", out.strip())[0] == 0


# ---------------------------------------------------------------- mint refusals


@pytest.mark.parametrize(
    "extra",
    [
        ("--target", "https://evil.example.org/"),
        ("--target", "javascript:alert(1)"),
        ("--target", "https://shop.example.com@evil.example.org/"),
        ("--target", "https://shop.example.com/", "--ttl", "0"),
        ("--target", "https://shop.example.com/", "--promoter", "bad id"),
        ("--target", "https://shop.example.com/", "--sub", "1", "--sub", "2", "--sub", "3",
         "--sub", "4", "--sub", "5", "--sub", "6"),
        ("--target", "https://shop.example.com/", "--sub", "x", "--sub", ""),
        ("--target", "https://shop.example.com/", "--base-url", "ftp://edge/c"),
    ],
)
def test_mint_refusals_exit_2(capsys: pytest.CaptureFixture[str], extra: tuple[str, ...]) -> None:
    code, out, err = run(capsys, "mint", "--promoter", "p", "--channel", "c", *extra)
    assert code == 2
    assert out == ""
    assert_clean_error(err)
    assert "cannot mint" in err


@pytest.mark.parametrize(
    "target",
    [*HOSTILE_UNICODE,
     "https://shop.example.com/?%63ps_click_id=evil",
     "https://shop.example.com/?cps%5Fpromoter=evil",
     "https://shop.example.com/?cps.click.id=evil",
     "https://shop.example.com/?cps_click_id[]=evil",
     "https://shop.example.com/?a=1;cps_channel=evil"],
)
def test_mint_hostile_targets_exit_2_with_a_reason(capsys: pytest.CaptureFixture[str],
                                                  target: str) -> None:
    # These used to end in a ValueError or UnicodeEncodeError traceback, or to mint.
    code, out, err = run(capsys, "mint", "--promoter", "p", "--channel", "c", "--target", target)
    assert code == 2
    assert out == ""
    assert_clean_error(err)
    assert err.startswith("cps-link: cannot mint: target ")
    assert err.isascii()


@pytest.mark.parametrize("base", ["https://edge.example\uff0fx/c", "https://[/c",
                                  "https://edge.example]/c", "https://edge.example/c\udcff",
                                  "https://edge.example:x/c"])
def test_mint_hostile_base_urls_exit_2_with_a_reason(capsys: pytest.CaptureFixture[str],
                                                    base: str) -> None:
    code, out, err = run(capsys, "mint", "--promoter", "p", "--channel", "c",
                         "--target", "https://shop.example.com/", "--base-url", base)
    assert code == 2
    assert out == ""
    assert_clean_error(err)
    assert err.startswith("cps-link: cannot mint: base URL ")


def test_mint_off_list_target_names_the_host(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "mint", "--promoter", "p", "--channel", "c",
                       "--target", "https://evil.example.org/")
    assert code == 2
    assert "evil.example.org" in err


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["mint"], ["mint", "--promoter", "p"], ["frobnicate"],
                 ["mint", "--promoter", "p", "--channel", "c", "--target", "x", "--ttl", "soon"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        capsys.readouterr()


# ---------------------------------------------------------------- configuration errors


@pytest.mark.parametrize(
    "value",
    [None, "", "k1", "k1:", "k1:!!!not-base64",
     "k1:" + base64.urlsafe_b64encode(b"x" * 16).decode(),
     "k 1:" + base64.urlsafe_b64encode(SECRET).decode(), KEYS + "," + KEYS],
    ids=["unset", "empty", "no_colon", "empty_key", "bad_b64", "short", "bad_kid", "dup"],
)
@pytest.mark.parametrize("command", ["mint", "inspect"])
def test_bad_link_keys_exit_2(capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch, value: str | None,
                              command: str) -> None:
    if value is None:
        monkeypatch.delenv("CPS_LINK_KEYS")
    else:
        monkeypatch.setenv("CPS_LINK_KEYS", value)
    argv = (["mint", "--promoter", "p", "--channel", "c", "--target", "https://shop.example.com/"]
            if command == "mint" else ["inspect", "https://edge.example/c?p=1"])
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert_clean_error(err)
    assert "CPS_LINK_KEYS" in err
    if value and ":" in value:
        secret_text = value.split(",")[0].partition(":")[2]
        if len(secret_text) > 4:
            assert secret_text not in err


def test_missing_allow_list_exits_2(capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CPS_ALLOWED_TARGET_HOSTS")
    code, _, err = run(capsys, "inspect", "https://edge.example/c?p=1")
    assert code == 2
    assert_clean_error(err)
    assert "CPS_ALLOWED_TARGET_HOSTS" in err


def test_bad_allow_list_exits_2(capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPS_ALLOWED_TARGET_HOSTS", "shop.example.com,https://bad/")
    code, _, err = run(capsys, "inspect", "https://edge.example/c?p=1")
    assert code == 2
    assert_clean_error(err)
    assert "CPS_ALLOWED_TARGET_HOSTS" in err


def test_link_keys_file(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                        tmp_path: Path) -> None:
    url = mint(capsys)
    path = tmp_path / "link-keys"
    path.write_text(KEYS + "\n", encoding="utf-8")
    monkeypatch.delenv("CPS_LINK_KEYS")
    monkeypatch.setenv("CPS_LINK_KEYS_FILE", str(path))
    code, out, err = run(capsys, "inspect", url)
    assert code == 0, err
    assert out.startswith("verdict: valid")
    # A file with a different key: the link no longer verifies.
    path.write_text(generate_ring(("k1",)).to_text(), encoding="utf-8")
    assert run(capsys, "inspect", url)[0] == 1


def test_link_keys_file_unreadable(capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CPS_LINK_KEYS")
    monkeypatch.setenv("CPS_LINK_KEYS_FILE", str(tmp_path / "missing"))
    code, _, err = run(capsys, "inspect", "https://edge.example/c?p=1")
    assert code == 2
    assert_clean_error(err)
    assert "CPS_LINK_KEYS_FILE" in err


def test_environment_beats_keys_file(capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = mint(capsys)
    path = tmp_path / "other"
    path.write_text(generate_ring(("k1",)).to_text(), encoding="utf-8")
    monkeypatch.setenv("CPS_LINK_KEYS_FILE", str(path))
    assert run(capsys, "inspect", url)[0] == 0


# ---------------------------------------------------------------- keygen


def test_keygen_prints_a_parsable_ring(capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CPS_LINK_KEYS")  # keygen needs no configuration
    monkeypatch.delenv("CPS_ALLOWED_TARGET_HOSTS")
    code, out, err = run(capsys, "keygen")
    assert code == 0
    assert err == ""
    ring = KeyRing.parse(out.strip(), what="CPS_LINK_KEYS")
    assert list(ring) == ["k1"]
    assert len(ring["k1"]) == 32
    code, out2, _ = run(capsys, "keygen", "--kid", "k2026", "--cookie")
    assert code == 0
    cookie_ring = KeyRing.parse(out2.strip(), what="CPS_COOKIE_KEYS", sizes=(16, 24, 32))
    assert list(cookie_ring) == ["k2026"]
    assert cookie_ring["k2026"] != ring["k1"]


def test_keygen_output_works_as_link_keys(capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _, out, _ = run(capsys, "keygen", "--kid", "fresh")
    monkeypatch.setenv("CPS_LINK_KEYS", out.strip())
    url = mint(capsys)
    assert "&kid=fresh&" in url
    assert run(capsys, "inspect", url)[0] == 0


def test_keygen_bad_kid_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "keygen", "--kid", "bad kid!")
    assert code == 2
    assert_clean_error(err)
