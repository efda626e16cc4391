"""Sending a transcription's callbacks over HTTP, paced, signed and retried as Twilio does.

A ``Playback`` is one transcription in progress: a thread that walks its timeline
(``conversation.timeline``) in real time divided by a speed factor, and that can be stopped at
any moment, as the REST resource's ``Status=stopped`` does.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urldefrag, urlencode

import requests

from receiver import signature
from receiver.devtools.conversation import Callback, Identity, stop_early
from receiver.protocol import SIGNATURE_HEADER, is_retried

USER_AGENT = "TwilioProxy/1.1"


@dataclass(frozen=True)
class Connection:
    """Twilio's connection overrides, read from the callback URL's fragment (``#rc=3&rt=5000``);
    the fragment itself is never sent."""

    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    retries: int = 1

    @classmethod
    def from_fragment(cls, fragment: str) -> Connection:
        values = {k: v[-1] for k, v in parse_qs(fragment).items()}

        def number(name: str, low: int, high: int, default: float) -> float:
            raw = values.get(name, "")
            return min(high, max(low, int(raw))) if raw.isdigit() else default

        return cls(
            connect_timeout=number("ct", 100, 10000, 5000) / 1000,
            read_timeout=number("rt", 100, 15000, 15000) / 1000,
            retries=int(number("rc", 0, 5, 1)),
        )


@dataclass(frozen=True)
class SentCallback:
    """One callback as sent: the answer's HTTP status, or the connection error."""

    callback: Callback
    status: int | None
    error: str | None = None
    attempts: int = 1

    @property
    def outcome(self) -> str:
        return str(self.status) if self.status is not None else (self.error or "error")


def signed_request(
    url: str, method: str, params: dict[str, str], auth_token: str
) -> tuple[str, dict[str, str] | None, dict[str, str]]:
    """(URL to call, form body or None, headers) exactly as Twilio would send them.

    The signature covers the URL as it goes on the wire, so it is quoted the way ``requests``
    will send it before it is signed (a space in a query becomes ``%20`` on both sides).
    """
    if method == "GET":
        url = f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"
    wire = requests.Request(method, url).prepare().url or url
    if method == "GET":
        return wire, None, {SIGNATURE_HEADER: signature.compute(auth_token, wire, {})}
    multi = {name: [value] for name, value in params.items()}
    return wire, params, {SIGNATURE_HEADER: signature.compute(auth_token, wire, multi)}


def send(
    session: requests.Session,
    callback: Callback,
    *,
    url: str,
    method: str,
    auth_token: str,
    idempotency_token: str,
) -> SentCallback:
    """Deliver one callback, retrying what Twilio retries."""
    target, connection = urldefrag(url)
    overrides = Connection.from_fragment(connection)
    full_url, body, headers = signed_request(target, method, dict(callback.params), auth_token)
    headers.update({"User-Agent": USER_AGENT, "I-Twilio-Idempotency-Token": idempotency_token})
    status: int | None = None
    error: str | None = None
    attempts = 0
    for attempts in range(1, overrides.retries + 2):
        try:
            response = session.request(
                method,
                full_url,
                data=body,
                headers=headers,
                timeout=(overrides.connect_timeout, overrides.read_timeout),
                allow_redirects=False,
            )
            status, error = response.status_code, None
            response.close()
            if not is_retried(status):
                break
        except requests.RequestException as exc:
            status, error = None, type(exc).__name__
        if attempts <= overrides.retries:
            time.sleep(min(0.05 * attempts, 0.5))
    return SentCallback(callback, status, error, attempts)


@dataclass
class Playback:
    """One transcription's callbacks being played in a thread of their own."""

    identity: Identity
    plan: list[Callback]
    url: str | None
    method: str
    auth_token: str
    speed: float = 1.0
    on_finish: Callable[[Playback], None] | None = None  # run after the last callback
    deliveries: list[SentCallback] = field(default_factory=list)
    finished: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _started: float = 0.0

    def start(self) -> Playback:
        self._started = time.monotonic()
        self._thread = threading.Thread(
            target=self._run, name=f"playback-{self.identity.transcription_sid}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop as the REST resource's ``Status=stopped`` does; returns at once."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.finished.wait(timeout)

    def elapsed(self) -> float:
        """Seconds of conversation time since the transcription started."""
        return (time.monotonic() - self._started) * self.speed

    def _run(self) -> None:
        session = requests.Session()
        tokens: dict[str, str] = {}
        try:
            queue = list(self.plan)
            sent = 0
            while sent < len(queue):
                callback = queue[sent]
                wait = callback.send_at / self.speed - (time.monotonic() - self._started)
                if self._stop.is_set() or (wait > 0 and self._stop.wait(wait)):
                    queue = queue[:sent] + stop_early(self.identity, queue, sent, self.elapsed())
                    self._stop.clear()
                    continue
                if self.url:
                    # A repeated delivery carries the same idempotency token, as a retry does.
                    key = callback.params["SequenceId"]
                    token = tokens.setdefault(key, str(uuid.uuid4()))
                    delivery = send(
                        session,
                        callback,
                        url=self.url,
                        method=self.method,
                        auth_token=self.auth_token,
                        idempotency_token=token,
                    )
                    self.deliveries.append(delivery)
                sent += 1
        finally:
            session.close()
            self.finished.set()
            if self.on_finish:
                self.on_finish(self)


@dataclass
class Summary:
    """What was sent, for reports: counts per event, per answer and per injected fault."""

    sent: int = 0
    by_event: dict[str, int] = field(default_factory=dict)
    by_outcome: dict[str, int] = field(default_factory=dict)
    by_fault: dict[str, int] = field(default_factory=dict)

    def add(self, delivery: SentCallback) -> None:
        self.sent += 1
        name = delivery.callback.event.removeprefix("transcription-")
        self.by_event[name] = self.by_event.get(name, 0) + 1
        self.by_outcome[delivery.outcome] = self.by_outcome.get(delivery.outcome, 0) + 1
        if delivery.callback.note:
            note = delivery.callback.note
            self.by_fault[note] = self.by_fault.get(note, 0) + 1
