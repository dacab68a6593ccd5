"""Secrets (Standard Webhooks form, sealed at rest) and endpoint URL rules."""

from __future__ import annotations

import base64

import pytest
from standardwebhooks.webhooks import Webhook

from contracts.keys import generate_ring
from push_worker.deliver import sign_headers
from push_worker.endpoints import (
    EndpointError,
    SecretSealer,
    check_url,
    new_secret_text,
)


def test_a_new_secret_is_whsec_base64_of_32_random_bytes() -> None:
    text, raw = new_secret_text()
    assert text.startswith("whsec_")
    assert base64.b64decode(text.removeprefix("whsec_")) == raw
    assert len(raw) == 32
    assert new_secret_text()[1] != raw


def test_the_shown_secret_verifies_what_the_worker_signs() -> None:
    text, raw = new_secret_text()
    headers = sign_headers("evt_1", b"{}", [raw])
    assert Webhook(text).verify(b"{}", headers) == {}


def test_secrets_shorter_than_24_bytes_are_refused() -> None:
    with pytest.raises(EndpointError, match="24"):
        new_secret_text(16)


def test_sealing_round_trips_and_binds_the_row() -> None:
    sealer = SecretSealer(generate_ring(("k1",), 32))
    sealed = sealer.seal(b"s" * 32, b"wh_1|sec_1")
    assert b"s" * 32 not in sealed
    assert sealer.unseal(sealed, b"wh_1|sec_1") == b"s" * 32
    with pytest.raises(EndpointError, match="tampered"):
        sealer.unseal(sealed, b"wh_2|sec_1")


def test_rotated_keys_still_open_old_seals() -> None:
    old = generate_ring(("k1",), 32)
    sealed = SecretSealer(old).seal(b"x" * 32, b"a")
    from contracts.keys import KeyRing
    both = KeyRing((("k2", b"n" * 32), ("k1", old["k1"])))
    assert SecretSealer(both).unseal(sealed, b"a") == b"x" * 32
    with pytest.raises(EndpointError, match="not in CPS_PUSH_SECRET_KEYS"):
        SecretSealer(generate_ring(("k9",), 32)).unseal(sealed, b"a")


def test_keys_must_be_aes_sizes() -> None:
    with pytest.raises(ValueError, match="16, 24 or 32"):
        SecretSealer(generate_ring(("k1",), 20))


@pytest.mark.parametrize("url", ["https://hooks.example.com/cps", "https://1.2.3.4:8443/x"])
def test_https_urls_are_accepted(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize("url", ["http://127.0.0.1:9000/h", "http://localhost/h"])
def test_local_http_needs_the_dev_flag(url: str) -> None:
    with pytest.raises(EndpointError, match="--dev"):
        check_url(url)
    assert check_url(url, allow_http_localhost=True) == url


@pytest.mark.parametrize("url", ["http://hooks.example.com/", "ftp://x.example/", "hooks",
                                 "https://", ""])
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(EndpointError):
        check_url(url, allow_http_localhost=True)
