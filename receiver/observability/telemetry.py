"""What happened to each callback, recorded once and reported twice: as metrics and as a log line.

The views note facts as they learn them (``note``: the event once parsed, the outcome where it is
decided); the hooks here time the request and, when it is answered, turn the notes into one
metrics observation and one structured log line. Nothing here reads transcript text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from flask import Flask, Response, g, request

from receiver.observability import logs, metrics


@dataclass
class CallbackRecord:
    started: float
    account_sid: str | None = None  # set once the signature proved it
    event: str | None = None
    call_sid: str | None = None
    transcription_sid: str | None = None
    sequence_id: int | None = None
    outcome: str | None = None
    reason: str = ""
    reported: bool = False


def note(**facts: object) -> None:
    """Record facts about the callback being answered (no-op outside a callback request)."""
    record = g.get("rtt_callback")
    if record is not None:
        for name, value in facts.items():
            setattr(record, name, value)


def _outcome_from_status(status: int) -> str:
    """For answers no view classified (405, 413, 415, a 400 before parsing, a crash)."""
    if status == 503:
        return "storage_unavailable"
    if status >= 500:
        return "error"
    if status >= 400:
        return "bad_request"
    return "stored"


def _report(record: CallbackRecord, status: int) -> None:
    record.reported = True
    seconds = time.perf_counter() - record.started
    outcome = record.outcome or _outcome_from_status(status)
    metrics.observe_callback(record.event, outcome, record.reason, seconds)
    if record.account_sid:
        metrics.count_account_callback(record.account_sid, outcome)
    logs.callback(
        account_sid=record.account_sid,
        call_sid=record.call_sid,
        transcription_sid=record.transcription_sid,
        event=record.event,
        sequence_id=record.sequence_id,
        outcome=outcome,
        reason=record.reason or None,
        status=status,
        latency_ms=round(seconds * 1000, 2),
        method=request.method,
    )


def _answered(response: Response) -> Response:
    record = g.get("rtt_callback")
    if record is not None and not record.reported:
        _report(record, response.status_code)
    return response


def _torn_down(error: BaseException | None) -> None:
    # An exception no handler turned into an answer: Flask answers 500 without after_request.
    record = g.get("rtt_callback")
    if record is not None and not record.reported:
        _report(record, 500)


def install(app: Flask, live: metrics.LiveState, callback_path: str) -> None:
    """Time and report every request to ``callback_path``, and serve ``GET /metrics``."""

    def start() -> None:
        if request.path == callback_path:
            g.rtt_callback = CallbackRecord(started=time.perf_counter())

    app.before_request(start)
    app.after_request(_answered)
    app.teardown_request(_torn_down)
    app.extensions["metrics"] = live

    def metrics_view() -> Response:
        body, content_type = metrics.exposition(live)
        return Response(body, content_type=content_type)

    app.add_url_rule("/metrics", "metrics", metrics_view)
