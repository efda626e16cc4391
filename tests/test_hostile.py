"""Hostile input: whatever arrives, the answer is 2xx, 4xx or a storage 503, never a 500 or a
traceback, and nothing unsigned is stored. Property-based (hypothesis) over the HTTP endpoint
with a real Redis; HYPOTHESIS_PROFILE=long runs many more examples."""

from __future__ import annotations

import json
import socket
from dataclasses import replace
from urllib.parse import quote, urlencode

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from receiver import create_app
from receiver.signature import request_digest
from receiver.storage.contract import Keys

from .support.twilio_calls import ACCOUNT_SID, CALLBACK_PATH, callback, sign

# A signature in form (base64 of 20 bytes) that no token made: it passes the cheap checks.
WELL_FORMED = "A" * 27 + "="
# What HTTP can carry in a header value (latin-1 without controls) and any text a body can.
header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=300
)
any_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=200)
methods = st.sampled_from(
    ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "PROPFIND"]
)
header_names = st.sampled_from(
    [
        "X-Twilio-Signature",
        "X-Twilio-Webhooks-Signature-Settings",
        "Content-Type",
        "Host",
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
        "X-Forwarded-Port",
        "X-Forwarded-Prefix",
        "Content-Encoding",
        "Accept",
        "Cookie",
        "X-Whatever",
    ]
)
content_types = st.sampled_from(
    [
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded; charset=latin-1",
        "multipart/form-data; boundary=XyZ",
        "multipart/form-data",
        "application/json",
        "text/plain",
        "",
    ]
)
twilio_names = st.sampled_from(
    ["AccountSid", "CallSid", "TranscriptionSid", "TranscriptionEvent", "TranscriptionData",
     "SequenceId", "Track", "Final", "Stability", "Timestamp", "LanguageCode"]
)  # fmt: skip


@st.composite
def bodies(draw) -> bytes:
    kind = draw(st.sampled_from(["raw", "form", "multipart"]))
    if kind == "raw":
        return draw(st.binary(max_size=2048))
    pairs = draw(st.lists(st.tuples(st.one_of(twilio_names, any_text), any_text), max_size=20))
    if kind == "form":
        return urlencode(pairs).encode() + draw(st.sampled_from([b"", b"&%ff%fe=%c3", b"\xff\xfe"]))
    parts = b"".join(
        b'--XyZ\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
        % (name.encode("utf-8", "replace"), value.encode("utf-8"))
        for name, value in pairs
    )
    return parts + draw(st.sampled_from([b"--XyZ--\r\n", b"", b"--XyZ\r\nbroken"]))


def assert_answer_is_allowed(response) -> None:
    assert response.status_code != 500
    assert response.status_code < 500 or response.status_code == 503, response.status_code
    assert b"Traceback" not in response.data


@pytest.mark.parametrize("hops", [0, 1], ids=["direct", "behind-a-proxy"])
@given(
    method=methods,
    path=st.one_of(
        st.just(CALLBACK_PATH), st.just("/readyz"), any_text.map(lambda t: "/" + quote(t))
    ),
    query=st.lists(st.tuples(any_text, any_text), max_size=8),
    headers=st.dictionaries(header_names, header_text, max_size=6),
    content_type=content_types,
    body=bodies(),
)
def test_unsigned_garbage_is_never_a_500_and_never_stored(
    settings, redis_client, hops, method, path, query, headers, content_type, body
):
    client = create_app(replace(settings, proxy_hops=hops)).test_client()
    response = client.open(
        path,
        method=method,
        query_string=urlencode(query),
        headers={"Content-Type": content_type, **headers} if content_type else headers,
        data=body,
    )
    assert_answer_is_allowed(response)
    if path == CALLBACK_PATH and method not in ("OPTIONS",):
        assert response.status_code in (403, 405, 413, 415, 400), response.data
    assert redis_client.dbsize() == 0  # nothing unsigned, ever


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def signed_params(draw) -> dict[str, str]:
    """Mostly plausible callbacks with some fields garbled, plus unknown fields."""
    params = callback(
        draw(st.sampled_from(["started", "content", "stopped", "error", "paused"])),
        "CA" + draw(st.from_regex(r"[0-9a-f]{32}", fullmatch=True)),
        "GT" + draw(st.from_regex(r"[0-9a-f]{32}", fullmatch=True)),
        draw(st.none() | st.integers(0, 10**6)),
    )
    data = draw(
        st.one_of(
            st.builds(
                lambda t, c: json.dumps({"transcript": t, "confidence": c}), any_text, json_values
            ),
            json_values.map(json.dumps),
            any_text,
        )
    )
    params["TranscriptionData"] = data
    for name in draw(st.lists(twilio_names, max_size=3)):
        params[name] = draw(any_text)
    params.update(draw(st.dictionaries(any_text.filter(bool), any_text, max_size=5)))
    return params


@given(params=signed_params(), method=st.sampled_from(["POST", "GET"]))
def test_signed_anything_is_stored_or_dead_lettered_never_a_500(
    client, redis_client, params, method
):
    before = redis_client.xlen("rtt:rejected")
    if method == "POST":
        url = "http://localhost" + CALLBACK_PATH
        response = client.post(
            CALLBACK_PATH, data=params, headers={"X-Twilio-Signature": sign(url, params)}
        )
    else:
        path = CALLBACK_PATH + "?" + urlencode(params)
        url = "http://localhost" + path
        response = client.get(path, headers={"X-Twilio-Signature": sign(url)})
    assert_answer_is_allowed(response)
    assert response.status_code in (200, 400), response.data
    if response.status_code == 400:
        # Kept as a dead letter, once: hypothesis may send the very same request again.
        digest = request_digest(method, url, {k: [v] for k, v in params.items()})
        assert redis_client.zscore(Keys().rejected_seen, digest) is not None
        assert redis_client.xlen("rtt:rejected") in (before, before + 1)
    else:
        assert response.get_json()["outcome"] in ("stored", "duplicate")
        if params["AccountSid"] == ACCOUNT_SID and response.get_json()["outcome"] == "stored":
            call = f"rtt:call:{{{params['CallSid']}}}"
            assert redis_client.xlen(call) + redis_client.xlen(call + ":partials")


def content_params(data: str) -> dict[str, str]:
    return callback("content", "CA" + "1" * 32, "GT" + "2" * 32, 1, TranscriptionData=data)


@pytest.mark.parametrize(
    "data",
    [
        '{"transcript": "x", "confidence": ' + "9" * 400 + "}",  # too large for a float
        '{"transcript": "x", "a": ' + "[" * 5000 + "]" * 5000 + "}",  # deeper than Python recurses
        "[" * 50_000,
    ],
    ids=["huge-integer", "deep-nesting", "unclosed-nesting"],
)
def test_pathological_transcription_data_is_a_dead_letter(client, redis_client, data):
    params = content_params(data)
    url = "http://localhost" + CALLBACK_PATH
    response = client.post(
        CALLBACK_PATH, data=params, headers={"X-Twilio-Signature": sign(url, params)}
    )
    assert response.status_code == 400
    assert redis_client.xlen("rtt:rejected") == 1


def test_too_many_form_parts_and_oversized_bodies_are_refused(client, redis_client):
    """Refused before any HMAC: too large, too many parameters, multipart, a huge header."""
    many = "&".join(f"p{n}=1" for n in range(5000)).encode()
    multipart = (
        b"".join(
            b'--B\r\nContent-Disposition: form-data; name="p%d"\r\n\r\n1\r\n' % n
            for n in range(1000)
        )
        + b"--B--\r\n"
    )
    answers = [
        client.post(
            CALLBACK_PATH,
            data=b"x" * (2 * 1024 * 1024),
            content_type="application/x-www-form-urlencoded",
            headers={"X-Twilio-Signature": WELL_FORMED},
        ).status_code,
        client.post(
            CALLBACK_PATH,
            data=many,
            content_type="application/x-www-form-urlencoded",
            headers={"X-Twilio-Signature": WELL_FORMED},
        ).status_code,
        client.post(
            CALLBACK_PATH,
            data=multipart,
            content_type="multipart/form-data; boundary=B",
            headers={"X-Twilio-Signature": WELL_FORMED},
        ).status_code,
        client.post(
            CALLBACK_PATH,
            data=b"a=1",
            content_type="application/x-www-form-urlencoded",
            headers={"X-Twilio-Signature": "s" * 100_000},
        ).status_code,
    ]
    assert answers == [413, 400, 415, 403]
    assert redis_client.dbsize() == 0


# -- Against the real server: what only a socket can send ---------------------------------------


def raw_request(port: int, data: bytes, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # a client that sent less than it announced, then left
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


@pytest.mark.slow  # starts gunicorn
def test_malformed_http_is_refused_by_the_server(start_receiver, redis_client):
    server = start_receiver()
    cases = [
        b"POST /transcriptions/callback HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nX-Twilio-Signature: a\r\n\r\nab",
        b"POST /transcriptions/callback HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n\r\nzz\r\nbroken\r\n",
        b"GET /transcriptions/callback?" + b"a=1&" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % n for n in range(500)) + b"\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: \xff\xfe\r\nX-Twilio-Signature: \xff\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),  # a TLS hello
    ]
    for data in cases:
        answer = raw_request(server.port, data)
        status = answer.split(b"\r\n", 1)[0]
        assert not status.startswith(b"HTTP/1.1 5") or status.startswith(b"HTTP/1.1 503"), (
            data[:60],
            status,
        )
    assert redis_client.dbsize() == 0
    assert "Traceback" not in server.log.read_text()
    assert requests.get(server.url + "/healthz", timeout=5).ok


request_lines = st.sampled_from(
    [
        b"POST /transcriptions/callback HTTP/1.1",
        b"GET /transcriptions/callback?TranscriptionData=%ff HTTP/1.1",
        b"POST /transcriptions/callback HTTP/1.0",
        b"PUT /readyz HTTP/1.1",
    ]
)
raw_headers = st.lists(
    st.tuples(
        st.sampled_from([b"Host", b"Content-Length", b"Content-Type", b"Transfer-Encoding",
                         b"X-Twilio-Signature", b"Expect", b"Connection", b"X-Forwarded-For"]),
        st.binary(max_size=60).filter(lambda v: b"\r" not in v and b"\n" not in v),
    ),
    max_size=6,
)  # fmt: skip


@pytest.fixture
def receiver_server(start_receiver):
    """One receiver under gunicorn for every example of a test."""
    return start_receiver()


@pytest.mark.slow  # starts gunicorn
@given(line=request_lines, headers=raw_headers, body=st.binary(max_size=512))
def test_raw_http_to_the_real_server_is_never_a_500(
    receiver_server, redis_client, line, headers, body
):
    """Bytes straight to gunicorn: contradictory lengths, bogus chunking, binary header values."""
    request = line + b"\r\n" + b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    answer = raw_request(receiver_server.port, request + b"\r\n" + body, timeout=3)
    status = answer.split(b"\r\n", 1)[0]
    if status.startswith(b"HTTP/1.1 501"):
        # gunicorn's own answer, before the app, to a transfer coding it does not implement:
        # the one 5xx HTTP prescribes for it (RFC 9112 section 6.1). Nothing reaches the app.
        assert b"Unsupported transfer coding" in answer, answer
    else:
        assert not status.startswith(b"HTTP/1.1 5") or status.startswith(b"HTTP/1.1 503"), status
    assert redis_client.dbsize() == 0
    assert "Traceback" not in receiver_server.log.read_text()
