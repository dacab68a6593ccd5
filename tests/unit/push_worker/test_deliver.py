"""Standard Webhooks headers: verified by the standardwebhooks package itself."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from push_worker.deliver import sign_headers

SECRET_A = b"a" * 32
SECRET_B = b"b" * 32
BODY = b'{"type":"order.paid","data":{"order_id":"o-1"}}'


def test_headers_verify_with_the_standard_library() -> None:
    headers = sign_headers("evt_1", BODY, [SECRET_A])
    assert Webhook(SECRET_A).verify(BODY, headers) == {"type": "order.paid",
                                                       "data": {"order_id": "o-1"}}
    assert headers["webhook-id"] == "evt_1"
    assert headers["content-type"] == "application/json"


def test_the_signature_is_hmac_sha256_of_id_timestamp_body() -> None:
    headers = sign_headers("evt_1", BODY, [SECRET_A], now_s=1_700_000_000.7)
    assert headers["webhook-timestamp"] == "1700000000"
    mac = hmac.new(SECRET_A, b"evt_1.1700000000." + BODY, hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(mac).decode()


def test_one_signature_per_active_secret_each_verifies() -> None:
    headers = sign_headers("evt_2", BODY, [SECRET_B, SECRET_A])
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(SECRET_A).verify(BODY, headers)
    Webhook(SECRET_B).verify(BODY, headers)


def test_a_wrong_secret_or_an_edited_body_fails() -> None:
    headers = sign_headers("evt_3", BODY, [SECRET_A])
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET_B).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET_A).verify(BODY + b" ", headers)


def test_same_id_on_a_retry_new_timestamp() -> None:
    first = sign_headers("evt_4", BODY, [SECRET_A], now_s=time.time() - 60)
    again = sign_headers("evt_4", BODY, [SECRET_A])
    assert first["webhook-id"] == again["webhook-id"]
    assert first["webhook-timestamp"] != again["webhook-timestamp"]


def test_no_secret_no_push() -> None:
    with pytest.raises(ValueError, match="secret"):
        sign_headers("evt_5", BODY, [])
