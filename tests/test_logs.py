"""Transcripts are personal data: over a whole call, with a Redis outage, spooling, a dead letter
and forged requests, no log line at INFO or above holds transcript text, the auth token, a
signature or the Redis password."""

from __future__ import annotations

import json
import time
from urllib.parse import urlencode

import pytest
import requests

from .support.load import wait_drained
from .support.twilio_calls import CALLBACK_PATH, callback, content, sid, sign
from .test_secrets import ACL_PASSWORD, acl_url, add_acl_user

pytestmark = pytest.mark.slow  # starts servers or processes

TOKEN = "log-test-token-5b0c9d8e7f6a"
PHRASES = ["my card number is 4111", "date of birth nineteen eighty", "secret-canary-quokka"]


def post(base: str, params: dict, signature: str | None = None) -> requests.Response:
    url = base + CALLBACK_PATH
    header = signature if signature is not None else sign(url, params, TOKEN)
    return requests.post(url, data=params, headers={"X-Twilio-Signature": header}, timeout=10)


def get(base: str, params: dict) -> requests.Response:
    url = base + CALLBACK_PATH + "?" + urlencode(params)
    return requests.get(url, headers={"X-Twilio-Signature": sign(url, None, TOKEN)}, timeout=10)


def test_no_personal_data_or_secret_in_logs_at_info_or_above(own_redis, start_receiver, tmp_path):
    add_acl_user(own_redis)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    receiver = start_receiver(
        REDIS_URL=acl_url(own_redis),
        TWILIO_AUTH_TOKEN="",
        TWILIO_AUTH_TOKEN_FILE=str(token_file),
        LOG_LEVEL="debug",
    )
    call, gt = sid("CA"), sid("GT")
    signatures = []
    started = callback("started", call, gt, 1, InboundTrackLabel="customer")
    assert post(receiver.url, started).status_code == 200
    seq = 2
    for phrase in PHRASES[:2]:
        for final in (False, True):
            params = content(call, gt, seq, phrase, final=final)
            signatures.append(sign(receiver.url + CALLBACK_PATH, params, TOKEN))
            assert (get if seq % 2 else post)(receiver.url, params).status_code == 200
            seq += 1
    own_redis.kill()  # an outage mid-call: warnings are logged, events are spooled
    outage = content(call, gt, seq, PHRASES[2])
    assert post(receiver.url, outage).status_code == 202
    bad = callback("content", call, gt, seq + 1, TranscriptionData=f"not json {PHRASES[2]}")
    assert post(receiver.url, bad).status_code == 400  # a dead letter, spooled
    forged = content(call, gt, seq + 2, PHRASES[0])
    assert post(receiver.url, forged, signature="Zm9yZ2VkIHNpZ25hdHVyZQ==").status_code == 403
    own_redis.start()
    add_acl_user(own_redis)  # ACL SETUSER is not persisted: set it again after the restart
    wait_drained(receiver.url)
    assert post(receiver.url, callback("stopped", call, gt, seq + 3)).status_code == 200
    time.sleep(0.3)  # let the last lines reach the log file

    lines = receiver.log.read_text(errors="replace").splitlines()
    shown = [line for line in lines if not line.count("[DEBUG]")]
    assert any("redis unavailable" in line for line in shown), "receiver warnings not logged"
    assert any("spool drained" in line for line in shown)
    forbidden = [
        *PHRASES,
        *(word for phrase in PHRASES for word in phrase.split() if len(word) > 5),
        TOKEN,
        ACL_PASSWORD,
        json.dumps(ACL_PASSWORD)[1:-1],
        *signatures,
        "Zm9yZ2VkIHNpZ25hdHVyZQ==",
    ]
    leaks = [(secret, line) for line in shown for secret in forbidden if secret in line]
    assert not leaks, leaks[:5]
