"""The pages, the live feed (Server-Sent Events) and the transcript downloads."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator

import redis
from flask import Blueprint, Response, abort, current_app, g, render_template, request

from receiver.dashboard import calls, transcript
from receiver.dashboard.live import Trimmed, Viewer, feed, parse_id
from receiver.protocol import SID_PATTERNS

log = logging.getLogger(__name__)
blueprint = Blueprint("dashboard", __name__)
# How long a browser waits before reconnecting after the connection dropped.
RETRY_MS = 1000


def state():
    return current_app.extensions["dashboard"]


def _call_sid(call_sid: str) -> str:
    if not SID_PATTERNS["CallSid"].match(call_sid):
        abort(404)
    return call_sid


@blueprint.get("/healthz")
def healthz() -> Response:
    return Response("ok\n", mimetype="text/plain")


@blueprint.get("/readyz")
def readyz() -> Response:
    """Ready when Redis answers: the pages need it, the process itself does not."""
    state().client.ping()
    return Response("ready\n", mimetype="text/plain")


@blueprint.app_errorhandler(redis.RedisError)
def redis_unavailable(error: redis.RedisError) -> tuple[str | Response, int]:
    """Redis is down or unreachable: say so (never its URL), and try again. The dashboard
    connects on each use, so it recovers by itself once Redis is back."""
    log.warning("dashboard: Redis is unavailable: %s", type(error).__name__)
    if request.path == "/readyz" or not request.accept_mimetypes.accept_html:
        return Response("Redis is unavailable\n", mimetype="text/plain"), 503
    return render_template("unavailable.html", reason=type(error).__name__, user=g.get("user")), 503


@blueprint.get("/")
def index() -> str:
    s = state()
    sid_filter = request.args.get("call", "").strip()[:64]
    text_filter = request.args.get("q", "").strip()[:200]
    newest = s.client.xrevrange(s.keys.events, count=1)
    retention = s.settings.call_retention_seconds
    active = calls.active_calls(s.client, s.keys, retention)
    ended, matched = calls.ended_calls(
        s.client,
        s.keys,
        hours=s.settings.recent_hours,
        retention_seconds=retention,
        sid_filter=sid_filter,
        text_filter=text_filter,
    )
    return render_template(
        "index.html",
        active=active,
        ended=ended,
        matched=matched,
        hours=s.settings.recent_hours,
        sid_filter=sid_filter,
        text_filter=text_filter,
        after=newest[0][0] if newest else "0-0",
        user=g.get("user"),
    )


@blueprint.get("/calls/<call_sid>")
def call(call_sid: str) -> str:
    s = state()
    low = s.settings.low_confidence_percent / 100
    retention = s.settings.call_retention_seconds
    conversation = calls.conversation(s.client, s.keys, _call_sid(call_sid), low, retention)
    return render_template("call.html", c=conversation, low_confidence=low, user=g.get("user"))


def _download(body: str, mimetype: str, filename: str) -> Response:
    response = Response(body, mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@blueprint.get("/calls/<call_sid>/transcript.txt")
def transcript_txt(call_sid: str) -> Response:
    s = state()
    utterances = transcript.load(s.client, s.keys, _call_sid(call_sid))
    return _download(transcript.as_text(call_sid, utterances), "text/plain", f"{call_sid}.txt")


@blueprint.get("/calls/<call_sid>/transcript.json")
def transcript_json(call_sid: str) -> Response:
    s = state()
    utterances = transcript.load(s.client, s.keys, _call_sid(call_sid))
    return _download(
        transcript.as_json(call_sid, utterances), "application/json", f"{call_sid}.json"
    )


@blueprint.get("/calls/<call_sid>/transcript.vtt")
def transcript_vtt(call_sid: str) -> Response:
    s = state()
    utterances = transcript.load(s.client, s.keys, _call_sid(call_sid))
    first = s.client.xrange(s.keys.call(call_sid), count=1)
    start_ms = parse_id(first[0][0])[0] if first else (utterances[0].ms if utterances else 0)
    return _download(transcript.as_vtt(start_ms, utterances), "text/vtt", f"{call_sid}.vtt")


def _resume_point() -> str | None:
    """The browser's ``Last-Event-ID`` on a reconnect, else the page's ``after``; 400 with the
    reason when it is no entry id Redis would take."""
    for name, value in (
        ("Last-Event-ID", request.headers.get("Last-Event-ID")),
        ("after", request.args.get("after")),
    ):
        if value:
            try:
                parse_id(value.strip())
            except ValueError as error:
                abort(Response(f"{name}: {error}\n", 400, mimetype="text/plain"))
            return value.strip()
    return None


def sse(entry_id: str | None, event: str, data: str) -> str:
    head = f"id: {entry_id}\n" if entry_id else ""
    return f"{head}event: {event}\ndata: {data}\n\n"


@blueprint.get("/events")
def events() -> Response:
    """The live feed of one call (``?call=``, with partial results) or of every call (without
    partial results), as Server-Sent Events whose ids are ``{prefix}:events`` entry ids."""
    s = state()
    call_sid = request.args.get("call") or None
    if call_sid is not None:
        _call_sid(call_sid)
    after = _resume_point()
    sock = request.environ.get("gunicorn.socket")

    def messages(viewer: Viewer) -> Iterator[str]:
        yield f"retry: {RETRY_MS}\n: connected\n\n"
        try:
            for entry in feed(s.hub, viewer, after, s.client):
                if entry is None:
                    yield ": keep-alive\n\n"
                    continue
                entry_id, fields = entry
                data: dict[str, object] = {"id": entry_id, **fields}
                at_ms = transcript.entry_time_score(fields)
                if at_ms is not None:
                    data["at_ms"] = at_ms  # where the page places it (transcript.in_order)
                yield sse(entry_id, "entry", json.dumps(data, ensure_ascii=False))
        except Trimmed:
            yield sse(None, "resync", json.dumps({"reason": "reload: events were missed"}))
        except redis.RedisError as error:
            # The replay could not be read: end the stream; the browser reconnects from its
            # last event (retry above) and the replay is tried again.
            log.warning("dashboard: replay failed, Redis is unavailable: %s", type(error).__name__)

    def stream() -> Iterator[str]:
        # Subscribed here, not before: a client gone before the first write leaves nothing.
        viewer = s.hub.subscribe(call_sid, partials=call_sid is not None, sock=sock)
        try:
            for message in messages(viewer):
                # The server writes each message before asking for the next: a write that
                # waits too long (the viewer stopped reading) gets the viewer dropped.
                viewer.writing_since = time.monotonic()
                yield message
                viewer.writing_since = None
        finally:
            s.hub.unsubscribe(viewer)

    response = Response(stream(), mimetype="text/event-stream")
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response
