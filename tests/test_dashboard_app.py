"""The dashboard in-process against a real Redis: settings, authentication, headers, pages,
transcripts, and the live feed's fan-out and resumption."""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from receiver.config import ConfigError
from receiver.dashboard import create_app
from receiver.dashboard.live import Hub, Trimmed, feed, replay
from receiver.dashboard.settings import (
    DashboardSettings,
    check_exposure,
    load_dashboard_settings,
)
from receiver.dashboard.transcript import Utterance, as_vtt, entry_time_score
from receiver.protocol import provider_data, timestamp
from receiver.server.network import free_port
from receiver.storage.contract import Keys

from .support.twilio_calls import callback, content, post, sid, whole_call
from .test_cluster import cluster_app, cluster_client, far_call_sid, redis_cluster  # noqa: F401

KEYS = Keys()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def dashboard(redis_server, redis_client):
    return create_app(DashboardSettings(redis_url=redis_server.url))


@pytest.fixture
def viewer_client(dashboard):
    return dashboard.test_client()


def test_settings_name_the_variable(tmp_path):
    with pytest.raises(ConfigError, match="REDIS_URL"):
        load_dashboard_settings({})
    with pytest.raises(ConfigError, match="DASHBOARD_AUTH='oauth'"):
        load_dashboard_settings({"REDIS_URL": "redis://x", "DASHBOARD_AUTH": "oauth"})
    with pytest.raises(ConfigError, match="DASHBOARD_PASSWORD_FILE"):
        load_dashboard_settings(
            {"REDIS_URL": "redis://x", "DASHBOARD_PASSWORD_FILE": str(tmp_path / "none")}
        )
    (tmp_path / "pw").write_text("s3cret\n")
    settings = load_dashboard_settings(
        {"REDIS_URL": "redis://x", "DASHBOARD_PASSWORD_FILE": str(tmp_path / "pw")}
    )
    assert (settings.auth, settings.username, settings.password) == ("basic", "rtt", "s3cret")
    assert "s3cret" not in repr(settings)


def test_no_authentication_only_on_loopback():
    open_settings = load_dashboard_settings({"REDIS_URL": "redis://x"})
    check_exposure(open_settings, "127.0.0.1")
    check_exposure(open_settings, "::1")
    for host in ("0.0.0.0", "192.0.2.7", "::"):
        with pytest.raises(ConfigError, match="without authentication"):
            check_exposure(open_settings, host)
    proxied = load_dashboard_settings({"REDIS_URL": "redis://x", "DASHBOARD_AUTH": "proxy"})
    check_exposure(proxied, "0.0.0.0")


def test_basic_auth(redis_server, redis_client):
    app = create_app(DashboardSettings(redis_url=redis_server.url, auth="basic", password="pw-1"))
    client = app.test_client()
    refused = client.get("/")
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Basic ")
    assert client.get("/", headers=basic("rtt", "wrong")).status_code == 401
    assert client.get("/", headers=basic("someone", "pw-1")).status_code == 401
    assert client.get("/events", headers=basic("rtt", "")).status_code == 401
    assert client.get("/static/dashboard.js").status_code == 401
    assert client.get("/healthz").status_code == 200
    assert client.get("/", headers=basic("rtt", "pw-1")).status_code == 200


def test_proxy_auth_trusts_the_user_header(redis_server, redis_client):
    app = create_app(DashboardSettings(redis_url=redis_server.url, auth="proxy"))
    client = app.test_client()
    assert client.get("/").status_code == 401
    assert client.get("/", headers={"X-Forwarded-User": " "}).status_code == 401
    page = client.get("/", headers={"X-Forwarded-User": "dana@example.com"})
    assert page.status_code == 200
    assert "dana@example.com" in page.get_data(as_text=True)


def test_without_redis_it_starts_and_says_so():
    app = create_app(DashboardSettings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503
    page = client.get("/", headers={"Accept": "text/html"})
    assert page.status_code == 503 and "Redis is unavailable" in page.get_data(as_text=True)
    assert page.headers["Content-Security-Policy"]
    assert client.get(f"/calls/{sid('CA')}/transcript.txt").status_code == 503


def test_security_headers(viewer_client):
    for path in ("/", f"/calls/{sid('CA')}", "/static/dashboard.js"):
        headers = viewer_client.get(path).headers
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"


def test_templates_have_no_inline_script(viewer_client):
    page = viewer_client.get("/").get_data(as_text=True)
    assert page.count("<script") == 1 and 'src="/static/dashboard.js"' in page
    assert " on" + "load=" not in page and "style=" not in page


def test_transcript_text_is_escaped(client, viewer_client, redis_client, call_sid):
    gt = sid("GT")
    hostile = '<script>alert(1)</script> <img src=x onerror="alert(2)">'
    post(client, callback("started", call_sid, gt, 1))
    post(client, content(call_sid, gt, 2, hostile))
    page = viewer_client.get(f"/calls/{call_sid}").get_data(as_text=True)
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    vtt = viewer_client.get(f"/calls/{call_sid}/transcript.vtt").get_data(as_text=True)
    assert "&lt;script&gt;" in vtt and "<script>" not in vtt


def test_unknown_or_malformed_call_sids(viewer_client):
    assert viewer_client.get("/calls/not-a-sid").status_code == 404
    assert viewer_client.get("/calls/CA123/transcript.txt").status_code == 404
    assert viewer_client.get("/events?call=../x").status_code == 404
    assert viewer_client.get("/events", headers={"Last-Event-ID": "x"}).status_code == 400


def test_calls_in_progress_and_ended(client, viewer_client, redis_client):
    live, done = sid("CA"), sid("CA")
    for call_sid in (live, done):
        gt = sid("GT")
        post(
            client,
            callback(
                "started", call_sid, gt, 1, InboundTrackLabel="customer", OutboundTrackLabel="agent"
            ),
        )
        post(client, content(call_sid, gt, 2, f"words of {call_sid[-4:]} about lisbon"))
        post(
            client,
            callback(
                "error",
                call_sid,
                gt,
                3,
                TranscriptionErrorCode="32655",
                TranscriptionError="Provider Unavailable",
            ),
        )
        if call_sid == done:
            post(client, callback("stopped", call_sid, gt, 4))
    page = viewer_client.get("/").get_data(as_text=True)
    active_part, ended_part = page.split('id="ended"')
    assert live in active_part and done not in active_part
    assert done in ended_part and live not in ended_part
    assert "customer / agent" in active_part and "32655 Provider Unavailable" in active_part
    assert f"customer: words of {live[-4:]} about lisbon" in active_part
    by_sid = viewer_client.get(f"/?call={done[-8:]}").get_data(as_text=True)
    assert done in by_sid.split('id="ended"')[1]
    by_words = viewer_client.get("/?q=LISBON+words").get_data(as_text=True)
    assert done in by_words.split('id="ended"')[1]
    nothing = viewer_client.get("/?q=madrid").get_data(as_text=True)
    assert done not in nothing.split('id="ended"')[1]


def test_conversation_history_and_downloads(client, viewer_client, call_sid):
    gt = sid("GT")
    for params in whole_call(call_sid, gt):
        post(client, params)
    post(client, content(call_sid, gt, 50, "unsure words", confidence=0.2))
    page = viewer_client.get(f"/calls/{call_sid}").get_data(as_text=True)
    assert "hello I need" not in page.replace("hello I need help", "")  # no partials
    assert page.index("hello I need help") < page.index("sure what is wrong")
    assert "Transcription started" in page and "Transcription stopped" in page
    assert "low confidence 0.2" in page
    text = viewer_client.get(f"/calls/{call_sid}/transcript.txt")
    assert text.headers["Content-Disposition"] == f'attachment; filename="{call_sid}.txt"'
    lines = text.get_data(as_text=True).splitlines()
    assert [line.split("] ", 1)[1] for line in lines[1:]] == [
        "customer: hello I need help",
        "agent: sure what is wrong",
        "customer: unsure words",
    ]
    data = json.loads(viewer_client.get(f"/calls/{call_sid}/transcript.json").data)
    assert [u["sequence_id"] for u in data["utterances"]] == [5, 9, 50]
    vtt = viewer_client.get(f"/calls/{call_sid}/transcript.vtt").get_data(as_text=True)
    assert vtt.startswith("WEBVTT\n\n1\n") and "<v agent>sure what is wrong" in vtt


def finals_everywhere(viewer_client, call_sid: str, texts: list[str]) -> dict[str, list[str]]:
    """The order of ``texts`` on the call's page, in transcript.txt and in transcript.json."""
    page = viewer_client.get(f"/calls/{call_sid}").get_data(as_text=True)
    lines = viewer_client.get(f"/calls/{call_sid}/transcript.txt").get_data(as_text=True)
    data = json.loads(viewer_client.get(f"/calls/{call_sid}/transcript.json").data)
    return {
        "page": sorted(texts, key=page.index),
        "txt": [line.split(": ", 1)[1] for line in lines.splitlines()[1:]],
        "json": [u["transcript"] for u in data["utterances"]],
    }


def test_two_transcriptions_taking_turns_interleave_as_they_came(client, viewer_client, call_sid):
    """One transcription per track, no provider data: SequenceIds of the two cannot be
    compared, so they interleave as stored; each stays in SequenceId order."""
    customer, agent = sid("GT"), sid("GT")
    post(client, callback("started", call_sid, customer, 1, Track="inbound_track"))
    post(client, callback("started", call_sid, agent, 1, Track="outbound_track"))
    for gt, seq, text in (
        (customer, 2, "customer one"),
        (agent, 2, "agent one"),
        (customer, 4, "customer three"),  # delivered before its predecessor
        (customer, 3, "customer two"),
        (agent, 3, "agent two"),
    ):
        track = "inbound_track" if gt == customer else "outbound_track"
        assert post(client, content(call_sid, gt, seq, text, track=track)).status_code == 200
    expected = ["customer one", "agent one", "customer two", "customer three", "agent two"]
    assert finals_everywhere(viewer_client, call_sid, expected) == dict.fromkeys(
        ("page", "txt", "json"), expected
    )


def test_finals_follow_the_spoken_time_of_the_finals_set(
    client, viewer_client, redis_client, call_sid
):
    """With provider timing the finals set orders the parties as they spoke; the page and the
    downloads keep that order, not the order Twilio numbered the results in."""
    gt = sid("GT")
    post(client, callback("started", call_sid, gt, 1))
    connected = timestamp(datetime.now(UTC) - timedelta(seconds=30))
    for seq, text, track, start in (
        (2, "customer, later", "inbound_track", 5.0),
        (3, "agent, earlier", "outbound_track", 2.0),
    ):
        spoken = provider_data(connected, start, 1.0)
        params = content(call_sid, gt, seq, text, track=track, TranscriptionProviderData=spoken)
        assert post(client, params).status_code == 200
    members = redis_client.zrange(KEYS.finals(call_sid), 0, -1)
    expected = [json.loads(m)["transcript"] for m in members]
    assert expected == ["agent, earlier", "customer, later"]
    assert finals_everywhere(viewer_client, call_sid, expected) == dict.fromkeys(
        ("page", "txt", "json"), expected
    )
    assert 'data-at="' in viewer_client.get(f"/calls/{call_sid}").get_data(as_text=True)


def test_the_json_download_has_every_field_of_each_final(
    client, viewer_client, redis_client, call_sid
):
    gt = sid("GT")
    post(client, callback("started", call_sid, gt, 1))
    connected = timestamp(datetime.now(UTC) - timedelta(seconds=30))
    spoken = provider_data(connected, 2.0, 1.5)
    post(client, content(call_sid, gt, 2, "timed", TranscriptionProviderData=spoken))
    post(client, content(call_sid, gt, 3, "untimed"))
    members = [json.loads(m) for m in redis_client.zrange(KEYS.finals(call_sid), 0, -1)]
    data = json.loads(viewer_client.get(f"/calls/{call_sid}/transcript.json").data)
    by_seq = {u["sequence_id"]: u for u in data["utterances"]}
    assert len(members) == len(by_seq) == 2
    for member in members:
        assert {k: v for k, v in by_seq[member["sequence_id"]].items() if k != "time"} == member
    assert "spoken_start" in by_seq[2] and "spoken_end" in by_seq[2]


def test_a_last_event_id_beyond_what_redis_takes_is_refused_with_a_reason(viewer_client):
    for value in ("99999999999999999999-0", "1-99999999999999999999", "+1-0", "1-2-3"):
        refused = viewer_client.get("/events", headers={"Last-Event-ID": value})
        assert refused.status_code == 400, value
        assert "Last-Event-ID" in refused.get_data(as_text=True)
    refused = viewer_client.get("/events?after=18446744073709551616-0")
    assert refused.status_code == 400 and "after" in refused.get_data(as_text=True)


def test_a_live_final_carries_the_time_it_is_placed_at():
    timed = {"event": "content", "final": "true", "spoken_start": "2026-01-23T21:47:46.614Z"}
    assert entry_time_score(timed) == 1769204866614
    unparsed = {"event": "content", "final": "true", "provider_data": "x"}
    assert entry_time_score({**unparsed, "timestamp": "2026-01-23T21:47:46.614Z"}) == (
        1769204866614
    )
    assert entry_time_score({"event": "content", "final": "true", "sequence_id": "7"}) is None
    assert entry_time_score({**timed, "final": "false"}) is None


def test_vtt_cues_end_when_the_final_was_stored_and_never_overlap():
    def u(ms: int, text: str) -> Utterance:
        return Utterance("GT1", ms, "inbound", "a b", text, "0.9", f"{ms}-0")

    vtt = as_vtt(1000, [u(6000, "one two three"), u(6500, "four"), u(9000, "x\n\ny")])
    cues = [block.split("\n") for block in vtt.strip().split("\n\n")[1:]]
    assert cues[0][1] == "00:00:03.800 --> 00:00:05.000"
    assert cues[1][1] == "00:00:05.000 --> 00:00:05.500"
    assert cues[2][1:] == ["00:00:07.000 --> 00:00:08.000", "<v a b>x y"]


# ---- the live feed ----------------------------------------------------------------------


def add(redis_client, keys: Keys, call_sid: str, n: int, **fields: str) -> str:
    return redis_client.xadd(
        keys.events,
        {
            "call_sid": call_sid,
            "event": "content",
            "final": "true",
            "transcript": f"u{n}",
            **fields,
        },
    )


def take(items, count: int) -> list:
    return [next(items) for _ in range(count)]


@pytest.fixture
def keys() -> Keys:
    return Keys(f"t{uuid.uuid4().hex[:8]}")


@pytest.fixture
def hub(redis_server, keys):
    import redis

    reader = redis.Redis.from_url(redis_server.url, decode_responses=True)
    hub = Hub(reader, keys, buffer=5)
    yield hub
    hub.stop()


def test_a_stalled_viewer_does_not_delay_the_others(hub, redis_client, keys):
    reading = hub.subscribe(None, partials=True)
    stalled = hub.subscribe(None, partials=True)
    ids = []
    for n in range(30):
        ids.append(add(redis_client, keys, "CA1", n))
        entry = reading.next(timeout=10)  # the reader keeps going while `stalled` is full
        assert entry is not None and entry[0] == ids[-1]
    assert stalled.fell_behind and stalled.queue.qsize() == 5
    with pytest.raises(Trimmed):
        list(feed(hub, stalled, None, redis_client))


def test_one_reader_for_every_viewer(hub, redis_client, keys):
    viewers = [hub.subscribe(None, partials=False) for _ in range(50)]
    assert hub.viewers == 50
    add(redis_client, keys, "CA1", 1)
    add(redis_client, keys, "CA1", 2, final="false")  # a partial: not for these viewers
    add(redis_client, keys, "CA1", 3)
    for viewer in viewers:
        assert [viewer.next(10)[1]["transcript"] for _ in range(2)] == ["u1", "u3"]
    clients = [c for c in redis_client.client_list() if c["cmd"].startswith("xread")]
    assert len(clients) == 1


def test_resume_after_an_id_has_no_gap_and_no_duplicate(hub, redis_client, keys):
    first = [add(redis_client, keys, "CA1", n) for n in range(2)]
    viewer = hub.subscribe("CA1", partials=True)  # subscribed first: live copies of u2-u4 too
    replayed = [add(redis_client, keys, "CA1", n) for n in range(2, 5)]
    add(redis_client, keys, "CA2", 99)  # another call
    # Wait until the live queue holds u2-u4, so that the feed sees every entry twice.
    while viewer.queue.qsize() < 3:
        hub._stop.wait(0.01)
    items = feed(hub, viewer, first[-1], redis_client)
    got = take(items, 3)
    later = [add(redis_client, keys, "CA1", n) for n in range(5, 7)]
    got += take(items, 2)
    assert [entry_id for entry_id, _ in got] == replayed + later


def test_resume_from_a_trimmed_id_asks_to_resynchronize(hub, redis_client, keys):
    old = add(redis_client, keys, "CA1", 0)
    for n in range(1, 200):
        redis_client.xadd(
            keys.events, {"call_sid": "CA1", "n": str(n)}, maxlen=10, approximate=False
        )
    viewer = hub.subscribe("CA1", partials=True)
    with pytest.raises(Trimmed):
        list(replay(redis_client, keys, old, viewer))


# ---- on a Redis Cluster -----------------------------------------------------------------


@pytest.mark.slow  # starts a Redis Cluster
def test_the_dashboard_on_a_cluster(redis_cluster, cluster_app, cluster_client, far_call_sid):  # noqa: F811
    """REDIS_CLUSTER=1: the pages, the downloads, the search and the live feed read keys of
    every slot (the call's on another master than the global keys)."""
    settings = load_dashboard_settings({"REDIS_URL": redis_cluster.url, "REDIS_CLUSTER": "1"})
    dashboard = create_app(settings)
    viewer = dashboard.test_client()
    receiver = cluster_app.test_client()
    for params in whole_call(far_call_sid, sid("GT")):
        assert post(receiver, params).status_code == 200
    assert viewer.get("/readyz").status_code == 200
    index = viewer.get("/?q=help").get_data(as_text=True)
    assert far_call_sid in index.split('id="ended"')[1]
    assert "sure what is wrong" in viewer.get(f"/calls/{far_call_sid}").get_data(as_text=True)
    text = viewer.get(f"/calls/{far_call_sid}/transcript.txt").get_data(as_text=True)
    assert text.splitlines()[1:] and "agent: sure what is wrong" in text
    hub = dashboard.extensions["dashboard"].hub
    try:
        live = hub.subscribe(None, partials=False)
        another = sid("CA")
        post(receiver, callback("started", another, sid("GT"), 1))
        entry = live.next(timeout=30)
        assert entry is not None and entry[1]["call_sid"] == another
    finally:
        hub.stop()


def test_a_call_idle_for_the_retention_is_not_shown_in_progress(redis_server, client, redis_client):
    """The receiver trims idle calls from rtt:calls:active only when it writes an event: with
    no traffic, the dashboard itself leaves out calls idle for CALL_RETENTION_SECONDS."""
    idle, live = sid("CA"), sid("CA")
    for call_sid in (idle, live):
        post(client, callback("started", call_sid, sid("GT"), 1))
    an_hour_ago = (time.time() - 3600) * 1000
    redis_client.zadd(KEYS.active_calls, {idle: an_hour_ago})  # its last event, an hour ago
    settings = load_dashboard_settings(
        {"REDIS_URL": redis_server.url, "CALL_RETENTION_SECONDS": "1800"}
    )
    page = create_app(settings).test_client().get("/").get_data(as_text=True)
    in_progress = page.split('id="ended"')[0]
    assert live in in_progress and idle not in in_progress
