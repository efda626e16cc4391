"""The attacks on one captured callback, against the real receiver under gunicorn and a real
Redis: what gunicorn and the WSGI layer pass on (HEAD, raw bodies) is what is tested."""

from __future__ import annotations

import stat
from urllib.parse import quote, urlencode

import pytest
import requests

from .support.streams import call_entries
from .support.twilio_calls import CALLBACK_PATH, callback, content, sid, sign

pytestmark = pytest.mark.slow  # starts gunicorn

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def body(params: dict[str, str]) -> str:
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params.items())


def test_folded_and_appended_copies_of_a_callback_store_nothing_new(
    start_receiver, redis_client, call_sid
):
    server = start_receiver()
    url = server.url + CALLBACK_PATH
    original = content(call_sid, sid("GT"), 7, "hello", final=False)
    headers = {**FORM, "X-Twilio-Signature": sign(url, original)}
    sent = requests.post(url, data=body(original), headers=headers, timeout=10)
    assert sent.json() == {"outcome": "stored"}
    folded = {k: v for k, v in original.items() if k != "SequenceId"}
    folded["LanguageCode"] += "SequenceId7"
    forged = [body(folded), body(original) + "&Final=false", body(original) + "&Final=false" * 2]
    for data in forged:
        answer = requests.post(url, data=data, headers=headers, timeout=10)
        assert answer.status_code == 400, data[-40:]
    assert len(call_entries(redis_client, call_sid)) == 1
    assert redis_client.xlen("rtt:events") == 1


def test_head_and_empty_posts_store_nothing(start_receiver, redis_client):
    server = start_receiver()
    params = callback("stopped", "CA" + "6" * 32, sid("GT"), 4)
    path = CALLBACK_PATH + "?" + urlencode(params)
    head = requests.head(
        server.url + path, headers={"X-Twilio-Signature": sign(server.url + path)}, timeout=10
    )
    assert head.status_code == 405
    url = server.url + CALLBACK_PATH
    for headers in ({}, FORM):
        empty = requests.post(url, headers={**headers, "X-Twilio-Signature": sign(url)}, timeout=10)
        assert empty.status_code == 400
    assert redis_client.dbsize() == 0


def test_an_open_spool_directory_is_tightened_at_start_up(start_receiver, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    spool.chmod(0o755)  # as the Dockerfile creates it
    start_receiver()
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700
