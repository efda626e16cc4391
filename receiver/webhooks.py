"""HTTP endpoints: the only module that touches ``flask.request``.

A callback goes request -> verified request -> normalized event -> stream entry. The answer
tells Twilio what to do next: 2xx means durable (200: in Redis, or stored before; 202: in the
local spool, on its way to Redis), 4xx means "do not retry" (Twilio will not), 503 means "retry"
(Twilio retries 5xx).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from urllib.parse import parse_qs, quote

import redis
from flask import Blueprint, Flask, Request, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from . import metrics, signature
from .config import Settings
from .delivery import Delivery, StorageUnavailable
from .events import InvalidEvent, TrackLabels, now_iso, parse
from .spool import Rejection
from .streams import Store
from .telemetry import note

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__)

CALLBACK_PATH = "/transcriptions/callback"
LABEL_PARAMS = ("inbound_label", "outbound_label")
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


@dataclass(frozen=True)
class Receiver:
    """What the views need, kept on ``app.extensions['receiver']``."""

    settings: Settings
    store: Store
    delivery: Delivery


class Refused(HTTPException):
    """A 4xx or 5xx answer with a short reason, rendered as JSON."""

    def __init__(self, code: int, reason: str, **headers: str) -> None:
        super().__init__(reason)
        self.code = code
        self.extra_headers = headers


def _receiver() -> Receiver:
    return current_app.extensions["receiver"]


def signed_url(req: Request, settings: Settings) -> str:
    """The URL Twilio signed: the public one, not necessarily the one this process sees.

    With ``PUBLIC_BASE_URL`` the scheme, host and prefix come from configuration; otherwise
    from the request, after ``ProxyFix`` has applied exactly ``PROXY_HOPS`` trusted hops. The
    query string is used byte for byte as received: re-encoding it breaks signatures.
    """
    path = quote(
        req.path if settings.public_base_url else req.root_path + req.path,
        safe="/!$&'()*+,;=:@-._~%",
    )
    base = settings.public_base_url or f"{req.scheme}://{req.host}"
    query = req.query_string.decode("utf-8", "replace")
    return f"{base}{path}?{query}" if query else f"{base}{path}"


def _form_params(req: Request) -> dict[str, list[str]]:
    if req.method != "POST":
        return {}
    if req.content_length and req.mimetype not in FORM_TYPES:
        raise Refused(415, f"callbacks are form-encoded; got Content-Type {req.mimetype!r}")
    try:
        if req.mimetype == FORM_TYPES[0]:
            # What werkzeug's form parser does for this type, at a third of its cost (profiled).
            try:
                body = req.get_data().decode()
            except ValueError:
                return {}
            return parse_qs(body, keep_blank_values=True, errors="werkzeug.url_quote")
        return req.form.to_dict(flat=False)
    except HTTPException:
        raise  # 413: too large, too many parts
    except Exception as error:
        # The WSGI server's input stream failed: gunicorn raises its own ParseException for a
        # malformed chunked body, OSError for a client gone mid-body. A 400, not a 500.
        raise Refused(400, f"malformed request body ({type(error).__name__})") from None


def _verify(req: Request, settings: Settings) -> dict[str, list[str]]:
    """The callback's signed parameters, or a 403 when the signature does not hold."""
    form = _form_params(req)
    url = signed_url(req, settings)
    header = req.headers.get(signature.SIGNATURE_HEADER)
    if header is None:
        note(outcome="signature_failure")
        raise Refused(403, f"missing {signature.SIGNATURE_HEADER} header")
    if not signature.is_valid(
        url, form, header, settings.auth_tokens, req.headers.get(signature.SETTINGS_HEADER)
    ):
        note(outcome="signature_failure")
        raise Refused(403, f"invalid {signature.SIGNATURE_HEADER} for {url}")
    if req.method == "POST":
        params = form
    else:
        params = req.args.to_dict(flat=False)
        for name in LABEL_PARAMS:
            params.pop(name, None)
    account = (params.get("AccountSid") or [None])[0]
    if settings.account_sid and account != settings.account_sid:
        note(outcome="wrong_account")
        raise Refused(403, f"AccountSid {account!r} is not this receiver's account")
    return params


def _url_labels(req: Request) -> TrackLabels:
    if not req.query_string:  # the common case: no labels, nothing to parse
        return TrackLabels()
    return TrackLabels(req.args.get("inbound_label"), req.args.get("outbound_label"))


# Built once: the answers of the hot path are always one of these.
_ANSWERS = {
    outcome: (json.dumps({"outcome": outcome}).encode() + b"\n", status)
    for outcome, status in (("stored", 200), ("duplicate", 200), ("spooled", 202))
}


def _answer(outcome: str) -> Response:
    """200, or 202 when the event is durable in the spool and in Redis once replayed."""
    body, status = _ANSWERS[outcome]
    return current_app.response_class(body, status, mimetype="application/json")


# No automatic OPTIONS answer: it would be a 200 that no signature checked (and counted).
@bp.route(CALLBACK_PATH, methods=["GET", "POST"], provide_automatic_options=False)
def callback():
    app, req = _receiver(), request._get_current_object()  # one proxy lookup, not dozens
    params = _verify(req, app.settings)
    received_at = now_iso()
    try:
        event = parse(params, received_at=received_at, url_labels=_url_labels(req))
    except InvalidEvent as error:
        note(outcome="rejected", reason=error.field)
        url = signed_url(req, app.settings)
        app.delivery.deliver(Rejection(error, params, received_at, req.method, url))
        raise Refused(400, str(error)) from None
    note(
        event=event.event,
        call_sid=event.call_sid,
        transcription_sid=event.transcription_sid,
        sequence_id=event.sequence_id,
    )
    outcome = app.delivery.deliver(event)
    note(outcome=outcome)
    return _answer(outcome)


@bp.route("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.route("/readyz")
def readyz():
    """Ready when callbacks can be stored durably: in Redis, or (degraded) in the spool."""
    delivery = _receiver().delivery
    extra = {} if delivery.spool is None else {"spool_depth": delivery.spool.depth()}
    try:
        _receiver().store.ping()
    except redis.RedisError as error:
        metrics.count_redis_error(error)
        if delivery.can_spool():
            return jsonify(status="degraded", redis=type(error).__name__, **extra)
        return jsonify(status="unavailable", redis=type(error).__name__, **extra), 503
    return jsonify(status="ready", redis="ok", **extra)


def _refused(error: HTTPException):
    response = jsonify(error=error.description, status=error.code)
    response.status_code = error.code or 500
    for name, value in getattr(error, "extra_headers", {}).items():
        response.headers[name.replace("_", "-")] = value
    return response


def _redis_down(error: redis.RedisError):
    log.warning("redis unavailable: %s", type(error).__name__)
    metrics.count_redis_error(error)
    note(outcome="storage_unavailable", reason="")
    return _refused(Refused(503, "storage unavailable, retry later", Retry_After="1"))


def _spool_down(error: StorageUnavailable):
    note(outcome="storage_unavailable", reason="")
    return _refused(Refused(503, "storage unavailable, retry later", Retry_After="1"))


def register(app: Flask) -> None:
    app.register_blueprint(bp)
    app.register_error_handler(HTTPException, _refused)
    app.register_error_handler(redis.RedisError, _redis_down)
    app.register_error_handler(StorageUnavailable, _spool_down)
