"""The real app under gunicorn with deploy/gunicorn.conf.py, over HTTP on 127.0.0.1."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import pytest
import requests

from .support.streams import call_entries
from .support.twilio_calls import CALLBACK_PATH, content, sid, sign, whole_call

pytestmark = pytest.mark.slow  # starts servers or processes


def send(base: str, params: dict, method: str = "POST", query: dict | None = None):
    if method == "GET":
        path = CALLBACK_PATH + "?" + urlencode({**params, **(query or {})})
        return requests.get(
            base + path, headers={"X-Twilio-Signature": sign(base + path)}, timeout=5
        )
    path = CALLBACK_PATH + ("?" + urlencode(query) if query else "")
    return requests.post(
        base + path,
        data=params,
        headers={"X-Twilio-Signature": sign(base + path, params)},
        timeout=5,
    )


def test_whole_signed_call_over_http(start_receiver, redis_client, call_sid):
    server = start_receiver()
    gt = sid("GT")
    events = whole_call(call_sid, gt)
    for n, params in enumerate(events):
        response = send(server.url, params, method="GET" if n % 2 else "POST")
        assert response.status_code == 200, response.text
    entries = call_entries(redis_client, call_sid)
    assert [e["event"] for e in entries] == ["started", *["content"] * (len(events) - 2), "stopped"]
    assert [e["sequence_id"] for e in entries] == [str(n) for n in range(1, len(events) + 1)]
    finals = [e for e in entries if e.get("final") == "true"]
    assert [(e["track"], e["track_label"], e["transcript"]) for e in finals] == [
        ("inbound", "customer", "hello I need help"),
        ("outbound", "agent", "sure what is wrong"),
    ]
    ordered = [
        json.loads(m)["transcript"]
        for m in redis_client.zrange(f"rtt:call:{{{call_sid}}}:finals", 0, -1)
    ]
    assert ordered == ["hello I need help", "sure what is wrong"]
    assert redis_client.xlen("rtt:events") == len(events)
    assert redis_client.zscore("rtt:calls:active", call_sid) is None


def test_concurrent_duplicates_over_http_land_once(start_receiver, redis_client, call_sid):
    server = start_receiver()
    params = content(call_sid, sid("GT"), 4, "said once, delivered many times")
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: send(server.url, params).json()["outcome"], range(40)))
    assert statuses.count("stored") == 1
    assert statuses.count("duplicate") == 39
    assert redis_client.xlen(f"rtt:call:{{{call_sid}}}") == 1


def test_unsigned_is_refused_over_http(start_receiver, redis_client, call_sid):
    server = start_receiver()
    response = requests.post(
        server.url + CALLBACK_PATH, data=content(call_sid, sid("GT"), 1, "x"), timeout=5
    )
    assert response.status_code == 403
    assert redis_client.dbsize() == 0


def test_gunicorn_refuses_to_start_without_a_token(start_receiver):
    try:
        start_receiver(TWILIO_AUTH_TOKEN="")
    except RuntimeError as error:
        assert "TWILIO_AUTH_TOKEN" in str(error)
    else:
        raise AssertionError("gunicorn started without a token")


def test_forwarded_headers_are_not_trusted_without_proxy_hops(
    start_receiver, redis_client, call_sid
):
    """gunicorn itself would apply X-Forwarded-Proto from loopback clients: it must not."""
    server = start_receiver()
    params = content(call_sid, sid("GT"), 1, "x")
    public = server.url.replace("http://", "https://") + CALLBACK_PATH
    response = requests.post(
        server.url + CALLBACK_PATH,
        data=params,
        headers={"X-Twilio-Signature": sign(public, params), "X-Forwarded-Proto": "https"},
        timeout=5,
    )
    assert response.status_code == 403
    assert redis_client.dbsize() == 0
