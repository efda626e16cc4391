"""The callback endpoint: request -> verified request -> normalized event -> stream entry.

The answer tells Twilio what to do next: 2xx means durable (200: in Redis, or stored before;
202: in the local spool, on its way to Redis), 4xx means "do not retry" (Twilio will not), 503
means "retry" (Twilio retries 5xx).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from flask import Blueprint, Request, Response, current_app, request

from receiver.events import Event, InvalidEvent, StaleEvent, check_age, now_iso, parse
from receiver.observability.telemetry import note
from receiver.storage.spool import Rejection
from receiver.verify import Refused, signed_url, url_labels, verify
from receiver.views.services import Receiver, current

log = logging.getLogger(__name__)
bp = Blueprint("callback", __name__)

CALLBACK_PATH = "/transcriptions/callback"

# Built once: the answers of the hot path are always one of these.
_ANSWERS = {
    outcome: (json.dumps({"outcome": outcome}).encode() + b"\n", status)
    for outcome, status in (("stored", 200), ("duplicate", 200), ("spooled", 202))
}


def _answer(outcome: str) -> Response:
    body, status = _ANSWERS[outcome]
    return current_app.response_class(body, status, mimetype="application/json")


@bp.before_request
def _start_background() -> None:
    """Outside gunicorn (whose post_worker_init hook does it), the first callback starts the
    process' background work."""
    current().start()


# No automatic OPTIONS answer: it would be a 200 that no signature checked (and counted).
@bp.route(CALLBACK_PATH, methods=["GET", "POST"], provide_automatic_options=False)
def callback() -> Response:
    # One proxy lookup, not dozens.
    receiver, req = current(), request._get_current_object()  # type: ignore[attr-defined]
    params = verify(req, receiver.settings)
    event = _normalize(receiver, req, params)
    note(
        event=event.event,
        call_sid=event.call_sid,
        transcription_sid=event.transcription_sid,
        sequence_id=event.sequence_id,
    )
    outcome = receiver.writer.write(event)
    note(outcome=outcome)
    return _answer(outcome)


def _normalize(receiver: Receiver, req: Request, params: dict[str, list[str]]) -> Event:
    """The normalized event, or a 400 whose signed callback is kept as a dead letter."""
    received_at = now_iso()
    try:
        check_age(params, datetime.now(UTC), receiver.settings.max_event_age_seconds)
        return parse(params, received_at=received_at, url_labels=url_labels(req))
    except InvalidEvent as error:
        # The label, never the field: a repeated name is the sender's text.
        note(outcome="rejected", reason=error.label)
        if isinstance(error, StaleEvent):
            # Logged: a misset clock must not lose events unseen.
            log.warning("callback refused, Timestamp %s", error)
        url = signed_url(req, receiver.settings)
        receiver.writer.write(Rejection(error, params, received_at, req.method, url))
        raise Refused(400, str(error)) from None
