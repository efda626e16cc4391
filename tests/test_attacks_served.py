"""The attacks on one captured callback, against the real receiver under gunicorn and a real
Redis: what gunicorn and the WSGI layer pass on (HEAD, raw bodies, forwarded headers) is what
is tested. The same attacks in process, with more detail: test_forgery."""

from __future__ import annotations

import stat
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from receiver.events import REASONS
from receiver.protocol import timestamp
from receiver.server.process import Served

from .support.processes import start_receiver_process
from .support.streams import call_entries
from .support.twilio_calls import (
    CALLBACK_PATH,
    TOKEN,
    callback,
    content,
    raw_body,
    sid,
    sign,
    split_name_variants,
)

pytestmark = pytest.mark.slow  # starts gunicorn

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
SIGNATURE = "X-Twilio-Signature"
WELL_FORMED = "A" * 27 + "="  # a signature in form that no token made


@pytest.fixture(scope="module")
def served(redis_server, tmp_path_factory) -> Iterator[Served]:
    """One receiver for the module's door checks, behind one trusted proxy hop (PROXY_HOPS=1):
    without forwarded headers it checks the URL it was called at."""
    workdir = tmp_path_factory.mktemp("served")
    env = {
        "REDIS_URL": redis_server.url,
        "TWILIO_AUTH_TOKEN": TOKEN,
        "SPOOL_DIR": str(workdir / "spool"),
        "PROXY_HOPS": "1",
    }
    server = start_receiver_process(env, workdir)
    yield server
    server.stop()


def post_form(url: str, data: str, signature: str, **headers: str) -> requests.Response:
    return requests.post(
        url, data=data.encode(), headers={**FORM, SIGNATURE: signature, **headers}, timeout=10
    )


def _at(delta: timedelta) -> str:
    return timestamp(datetime.now(UTC) + delta)


def _stamped(delta: timedelta, extra: str = "") -> Callable[[str], requests.Response]:
    """A captured callback stamped ``delta`` from now, with ``extra`` appended to its body."""

    def send(url: str) -> requests.Response:
        params = content("CA" + "5" * 32, sid("GT"), 9, "hello", final=False)
        params["Timestamp"] = _at(delta)
        return post_form(url, raw_body(params) + extra, sign(url, params))

    return send


def _multipart(url: str) -> requests.Response:
    params = callback("stopped", "CA" + "5" * 32, sid("GT"), 3)
    files = {k: (None, v) for k, v in params.items()}
    return requests.post(url, files=files, headers={SIGNATURE: sign(url, params)}, timeout=10)


def _too_many(url: str) -> requests.Response:
    params = callback("stopped", "CA" + "5" * 32, sid("GT"), 3)
    params.update({f"X{n:03d}": "1" for n in range(101 - len(params))})
    return post_form(url, raw_body(params), sign(url, params))  # signed, yet refused for its size


def _unsigned_and_large(url: str) -> requests.Response:
    # 2 MiB is over MAX_BODY_BYTES: a 413 would mean the body was looked at before the header.
    return requests.post(url, data=b"a=" + b"b" * 2**21, headers=FORM, timeout=10)


def _malformed_signature_and_type(url: str) -> requests.Response:
    # text/plain would be a 415: the header's form is checked first.
    return requests.post(
        url, data=b"x", headers={"Content-Type": "text/plain", SIGNATURE: "s"}, timeout=10
    )


def _forwarded(scheme: str) -> Callable[[str], requests.Response]:
    def send(url: str) -> requests.Response:
        params = callback("stopped", "CA" + "5" * 32, sid("GT"), 3)
        public = f"{scheme}://rtt.example.com{CALLBACK_PATH}"
        forwarded = {"X-Forwarded-Proto": scheme, "X-Forwarded-Host": "rtt.example.com"}
        return post_form(url, raw_body(params), sign(public, params), **forwarded)

    return send


def _transcript_in_the_url(url: str) -> requests.Response:
    params = content("CA" + "5" * 32, sid("GT"), 2, "my card number is 4111")
    return requests.get(f"{url}?{urlencode(params)}", headers={SIGNATURE: WELL_FORMED}, timeout=10)


# (the request, its status, what is kept: nothing, a dead letter of "field", or an event)
DOOR: dict[str, tuple[Callable[[str], requests.Response], int, str]] = {
    "stale": (_stamped(-timedelta(days=2)), 400, "Timestamp"),
    "future": (_stamped(timedelta(minutes=10)), 400, "Timestamp"),
    "stale, a parameter repeated": (_stamped(-timedelta(days=2), "&Final=false"), 400, "Timestamp"),
    "multipart": (_multipart, 415, "nothing"),
    "101 parameters": (_too_many, 400, "nothing"),
    "no signature, before the size": (_unsigned_and_large, 403, "nothing"),
    "malformed signature, before the type": (_malformed_signature_and_type, 403, "nothing"),
    "forwarded scheme not http(s)": (_forwarded("javascript"), 400, "nothing"),
    "forwarded https": (_forwarded("https"), 200, "event"),
    "403 without the URL": (_transcript_in_the_url, 403, "nothing"),
}


@pytest.mark.parametrize("case", DOOR)
def test_the_door_under_gunicorn(served, redis_client, case):
    send, status, kept = DOOR[case]
    answer = send(served.url + CALLBACK_PATH)
    assert answer.status_code == status, answer.text
    assert "4111" not in answer.text and "127.0.0.1" not in answer.text
    if kept == "nothing":
        assert redis_client.dbsize() == 0
    elif kept == "event":
        assert redis_client.xlen("rtt:events") == 1
    else:
        [(_id, dead)] = redis_client.xrange("rtt:rejected")
        assert dead["field"] == kept
        assert not redis_client.exists("rtt:events")


def test_variants_of_a_capture_store_nothing_new_and_are_one_dead_letter(
    served, redis_client, call_sid
):
    url = served.url + CALLBACK_PATH
    original = content(call_sid, sid("GT"), 7, "hello there", final=False)
    signature = sign(url, original)
    assert post_form(url, raw_body(original), signature).json() == {"outcome": "stored"}
    folded = {k: v for k, v in original.items() if k != "SequenceId"}
    folded["LanguageCode"] += "SequenceId7"
    forged = [raw_body(folded), *(raw_body(original) + "&Final=false" * n for n in range(1, 6))]
    forged += split_name_variants(original, "TranscriptionData", 11)
    for data in forged:
        assert post_form(url, data, signature).status_code == 400, data[-40:]
    assert len(call_entries(redis_client, call_sid)) == 1
    assert redis_client.xlen("rtt:events") == 1
    assert redis_client.xlen("rtt:rejected") == 1


def _reasons(exposition: str) -> tuple[set[str], float]:
    """The reason labels of /metrics, and how many callbacks were rejected."""
    samples = [
        sample
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "rtt_callbacks_total"
    ]
    rejected = sum(s.value for s in samples if s.labels["outcome"] == "rejected")
    return {s.labels["reason"] for s in samples}, rejected


def test_names_a_sender_chose_are_no_metric_labels(served, call_sid):
    url = served.url + CALLBACK_PATH
    original = content(call_sid, sid("GT"), 7, "my card is 4111", final=False)
    signature = sign(url, original)
    metrics = served.url + "/metrics"
    _, before = _reasons(requests.get(metrics, timeout=10).text)
    variants = split_name_variants(original, "TranscriptionData", 20)
    for data in variants:
        assert post_form(url, data, signature).status_code == 400
    # Every worker's counts reach a scrape within a second (metrics.FLUSH_SECONDS).
    deadline = time.monotonic() + 30
    while True:
        exposition = requests.get(metrics, timeout=10).text
        reasons, rejected = _reasons(exposition)
        if rejected >= before + len(variants):
            break
        assert time.monotonic() < deadline, "the workers' counts never reached /metrics"
        time.sleep(0.2)
    assert reasons <= {"", *REASONS}
    assert "TranscriptionData{" not in exposition


def test_head_and_empty_posts_store_nothing(served, redis_client):
    params = callback("stopped", "CA" + "6" * 32, sid("GT"), 4)
    path = CALLBACK_PATH + "?" + urlencode(params)
    head = requests.head(
        served.url + path, headers={SIGNATURE: sign(served.url + path)}, timeout=10
    )
    assert head.status_code == 405
    url = served.url + CALLBACK_PATH
    for headers in ({}, FORM):
        empty = requests.post(url, headers={**headers, SIGNATURE: sign(url)}, timeout=10)
        assert empty.status_code == 400
    assert redis_client.dbsize() == 0


def test_replays_of_a_dead_letter_take_one_place_in_the_spool(start_receiver, own_redis, call_sid):
    server = start_receiver(REDIS_URL=own_redis.url)
    url = server.url + CALLBACK_PATH
    bad = callback("content", call_sid, sid("GT"), 1, TranscriptionData="not json")
    own_redis.kill()
    for _ in range(5):
        assert post_form(url, raw_body(bad), sign(url, bad)).status_code == 400
    ready: dict[str, Any] = requests.get(server.url + "/readyz", timeout=10).json()
    assert ready["spool_depth"] == 1
    own_redis.start()
    admin = redis.Redis.from_url(own_redis.url, decode_responses=True)
    deadline = time.monotonic() + 30
    while admin.xlen("rtt:rejected") < 1:
        assert time.monotonic() < deadline, "the spool was never drained"
        time.sleep(0.1)
    assert admin.xlen("rtt:rejected") == 1


def test_an_open_spool_directory_is_tightened_at_start_up(start_receiver, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    spool.chmod(0o755)  # as the Dockerfile creates it
    start_receiver()
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700
