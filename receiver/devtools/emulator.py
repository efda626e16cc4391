"""A local stand-in for Twilio's RealtimeTranscription REST resource.

Faithful enough that the official ``twilio`` client, with only ``client.api.base_url`` pointed
here, works unchanged: the same paths, form parameters, basic auth, resource JSON and error
JSON. Each transcription it creates plays a conversation and sends signed callbacks to
its ``StatusCallbackUrl`` (``playback.py``), so a receiver can be tested without real calls.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urldefrag, urlsplit

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from receiver.devtools.conversation import (
    DEFAULT_TIMESTAMP_DIGITS,
    Conversation,
    Faults,
    Identity,
    TranscriptionSettings,
    load_conversation,
    timeline,
)
from receiver.devtools.playback import Playback
from receiver.protocol import API_KEY_SID, SID_PATTERNS, TIMESTAMP_DIGITS, TRACK_SETTINGS
from receiver.server.network import is_loopback

ACCOUNT_SID = SID_PATTERNS["AccountSid"]
CALL_SID = SID_PATTERNS["CallSid"]
CALL_PATH = "/2010-04-01/Accounts/<account_sid>/Calls/<call_sid>"
API_PREFIX = f"{CALL_PATH}/Transcriptions"
METHODS = ("GET", "POST")
BOOLEAN_PARAMS = {
    "PartialResults": "partial_results",
    "ProfanityFilter": "profanity_filter",
    "EnableAutomaticPunctuation": "enable_automatic_punctuation",
    "EnableProviderData": "enable_provider_data",
}
TEXT_PARAMS = {
    "Name": "name",
    "InboundTrackLabel": "inbound_track_label",
    "OutboundTrackLabel": "outbound_track_label",
    "LanguageCode": "language_code",
    "TranscriptionEngine": "transcription_engine",
    "SpeechModel": "speech_model",
    "Hints": "hints",
    "IntelligenceService": "intelligence_service",
}
# A long-running emulator forgets the oldest stopped transcriptions beyond this many.
KEEP_STOPPED = 10_000
# Test credentials the emulator accepts when none are given (never real ones).
DEFAULT_ACCOUNT_SID = "AC" + "0" * 31 + "1"
DEFAULT_AUTH_TOKEN = "emulator-auth-token"

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An answer in Twilio's error shape: ``{"code", "message", "more_info", "status"}``."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, object]:
        return {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.status,
        }


def not_found(path: str) -> ApiError:
    return ApiError(404, 20404, f"The requested resource {path} was not found")


def invalid(name: str, value: str, expected: str) -> ApiError:
    return ApiError(400, 20001, f"Invalid parameter {name} ({value!r}): {expected}")


def call_not_in_progress(call_sid: str) -> ApiError:
    """The emulator's choice for a call that has ended: Twilio's "Invalid call state" code."""
    return ApiError(400, 21220, f"Invalid call state: call {call_sid} is not in progress")


def rfc2822(moment: datetime) -> str:
    return moment.strftime("%a, %d %b %Y %H:%M:%S +0000")


@dataclass
class Transcription:
    sid: str
    account_sid: str
    call_sid: str
    settings: TranscriptionSettings
    status: str
    date_updated: datetime
    playback: Playback

    @property
    def uri(self) -> str:
        return (
            f"/2010-04-01/Accounts/{self.account_sid}/Calls/{self.call_sid}"
            f"/Transcriptions/{self.sid}.json"
        )

    def resource(self) -> dict[str, object]:
        return {
            "account_sid": self.account_sid,
            "call_sid": self.call_sid,
            "sid": self.sid,
            "name": self.settings.name,
            "status": self.status,
            "date_updated": rfc2822(self.date_updated),
            "uri": self.uri,
        }


def _boolean(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise invalid(name, raw, "must be true or false")


@dataclass
class Emulator:
    """The account, its transcriptions and how they play; thread-safe."""

    account_sid: str = DEFAULT_ACCOUNT_SID
    auth_token: str = DEFAULT_AUTH_TOKEN
    conversation: Conversation = field(default_factory=load_conversation)
    faults: Faults = field(default_factory=Faults)
    speed: float = 1.0
    allow_remote: bool = False
    timestamp_digits: int = DEFAULT_TIMESTAMP_DIGITS
    # API keys of the account (SK… -> secret): REST credentials besides the auth token.
    api_keys: dict[str, str] = field(default_factory=dict)
    transcriptions: dict[str, Transcription] = field(default_factory=dict)
    # Calls hung up with Status=completed, (AccountSid, CallSid): they take no new transcription.
    completed_calls: dict[tuple[str, str], datetime] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if not ACCOUNT_SID.match(self.account_sid):
            raise ValueError(f"account SID {self.account_sid!r} does not match AC + 32 hex digits")
        if self.speed <= 0:
            raise ValueError(f"speed ({self.speed!r}) must be greater than 0")
        for key in self.api_keys:
            if not API_KEY_SID.match(key):
                raise ValueError(f"API key {key!r} does not match SK + 32 hex digits")
        if self.timestamp_digits not in TIMESTAMP_DIGITS:
            raise ValueError(
                f"timestamp digits ({self.timestamp_digits!r}) must be one of Twilio's: "
                + ", ".join(map(str, TIMESTAMP_DIGITS))
            )

    def authenticate(self, username: str | None, password: str | None) -> None:
        """Basic auth as Twilio takes it: the account SID and its auth token, or an API key's
        SID and its secret."""
        if username == self.account_sid and password == self.auth_token:
            return
        if username in self.api_keys and password == self.api_keys[username]:
            return
        raise ApiError(401, 20003, "Authenticate")

    def settings(self, params: Mapping[str, str]) -> TranscriptionSettings:
        """The create request's parameters, validated like Twilio's, with Twilio's defaults."""
        values: dict[str, object] = {}
        track = params.get("Track", "both_tracks")
        if track not in TRACK_SETTINGS:
            raise invalid("Track", track, "must be inbound_track, outbound_track or both_tracks")
        values["track"] = track
        method = params.get("StatusCallbackMethod", "POST").upper()
        if method not in METHODS:
            raise invalid("StatusCallbackMethod", params["StatusCallbackMethod"], "GET or POST")
        values["status_callback_method"] = method
        url = params.get("StatusCallbackUrl", "")
        if url:
            parts = urlsplit(urldefrag(url).url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ApiError(
                    400, 21609, f"Invalid StatusCallbackUrl ({url!r}): must be an absolute URL"
                )
            if not self.allow_remote and not is_loopback(parts.hostname):
                raise ApiError(
                    400,
                    21609,
                    f"Invalid StatusCallbackUrl ({url!r}): the emulator only calls loopback "
                    "hosts; start it with --allow-remote to call others",
                )
        values["status_callback_url"] = url
        for name, attribute in BOOLEAN_PARAMS.items():
            if params.get(name):
                values[attribute] = _boolean(name, params[name])
        for name, attribute in TEXT_PARAMS.items():
            if params.get(name):
                values[attribute] = params[name]
        return TranscriptionSettings(**values)  # type: ignore[arg-type]

    def create(self, account_sid: str, call_sid: str, params: Mapping[str, str]) -> Transcription:
        settings = self.settings(params)
        with self._lock:
            if (account_sid, call_sid) in self.completed_calls:
                raise call_not_in_progress(call_sid)
            if settings.name and self._find(account_sid, call_sid, settings.name, active=True):
                raise ApiError(
                    400,
                    20001,
                    f"Invalid parameter Name ({settings.name!r}): a transcription with this "
                    f"name is already in progress on call {call_sid}",
                )
            sid = "GT" + uuid.uuid4().hex
            now = datetime.now(UTC)
            identity = Identity(account_sid, call_sid, sid, now, self.speed, self.timestamp_digits)
            plan = timeline(self.conversation, settings, identity, self.faults)
            playback = Playback(
                identity,
                plan,
                settings.status_callback_url or None,
                settings.status_callback_method,
                self.auth_token,
                self.speed,
                on_finish=self._finished,
            )
            transcription = Transcription(
                sid, account_sid, call_sid, settings, "in-progress", now, playback
            )
            self.transcriptions[sid] = transcription
            self._forget_old()
        log.info("transcription %s started on call %s", sid, call_sid)
        playback.start()
        return transcription

    def _forget_old(self) -> None:
        stopped = [k for k, t in self.transcriptions.items() if t.status == "stopped"]
        for sid in stopped[: max(0, len(stopped) - KEEP_STOPPED)]:
            del self.transcriptions[sid]

    def _find(
        self, account_sid: str, call_sid: str, sid_or_name: str, active: bool = False
    ) -> Transcription | None:
        found = self.transcriptions.get(sid_or_name)
        if found is None:
            # By name: the latest one of that name on this call.
            named = [
                t
                for t in self.transcriptions.values()
                if t.settings.name == sid_or_name and t.call_sid == call_sid
            ]
            found = named[-1] if named else None
        if found is None or found.call_sid != call_sid or found.account_sid != account_sid:
            return None
        if active and found.status != "in-progress":
            return None
        return found

    def stop(self, account_sid: str, call_sid: str, sid_or_name: str, path: str) -> Transcription:
        with self._lock:
            found = self._find(account_sid, call_sid, sid_or_name)
            if found is None:
                raise not_found(path)
            if found.status == "stopped":
                # The emulator's choice: Twilio does not document stopping twice.
                raise ApiError(
                    400, 21220, f"Invalid call state: transcription {found.sid} is already stopped"
                )
            found.status = "stopped"
            found.date_updated = datetime.now(UTC)
        found.playback.stop()
        log.info("transcription %s stopped", found.sid)
        return found

    def hang_up(self, account_sid: str, call_sid: str) -> dict[str, object]:
        """``Status=completed`` on the Call resource: the call ends, its transcriptions stop
        (each sends ``transcription-stopped``), and it takes no new ones."""
        with self._lock:
            if (account_sid, call_sid) in self.completed_calls:
                raise call_not_in_progress(call_sid)
            now = datetime.now(UTC)
            self.completed_calls[(account_sid, call_sid)] = now
            ending = [
                t
                for t in self.transcriptions.values()
                if t.call_sid == call_sid
                and t.account_sid == account_sid
                and t.status == "in-progress"
            ]
            for transcription in ending:
                transcription.status = "stopped"
                transcription.date_updated = now
        for transcription in ending:
            transcription.playback.stop()
        log.info("call %s completed; %d transcription(s) stopped", call_sid, len(ending))
        return {
            "account_sid": account_sid,
            "sid": call_sid,
            "status": "completed",
            "date_updated": rfc2822(now),
            "end_time": rfc2822(now),
            "uri": f"/2010-04-01/Accounts/{account_sid}/Calls/{call_sid}.json",
        }

    def _finished(self, playback: Playback) -> None:
        with self._lock:
            found = self.transcriptions.get(playback.identity.transcription_sid)
            if found and found.status != "stopped":
                found.status = "stopped"
                found.date_updated = datetime.now(UTC)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every transcription has sent its last callback."""
        return all(t.playback.wait(timeout) for t in list(self.transcriptions.values()))

    def shutdown(self) -> None:
        for transcription in list(self.transcriptions.values()):
            transcription.playback.stop()


def _error(error: ApiError) -> Response:
    response = jsonify(error.body())
    response.status_code = error.status
    if error.status == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
    return response


def create_emulator_app(emulator: Emulator) -> Flask:
    app = Flask(__name__)

    def authenticate() -> None:
        auth = request.authorization
        emulator.authenticate(auth.username if auth else None, auth.password if auth else None)

    def check_path(account_sid: str, call_sid: str) -> None:
        if not ACCOUNT_SID.match(account_sid) or not CALL_SID.match(call_sid):
            raise not_found(request.path)
        if account_sid != emulator.account_sid:
            raise ApiError(401, 20003, "Authenticate")

    @app.post(f"{API_PREFIX}.json")
    def create(account_sid: str, call_sid: str):
        authenticate()
        check_path(account_sid, call_sid)
        transcription = emulator.create(account_sid, call_sid, request.form.to_dict())
        # 200, as the current OpenAPI says (201 before February 2025); the client takes any 2xx.
        return jsonify(transcription.resource()), 200

    @app.post(f"{CALL_PATH}.json")
    def update_call(account_sid: str, call_sid: str):
        authenticate()
        check_path(account_sid, call_sid)
        status = request.form.get("Status")
        if status != "completed":
            # The emulator's choice: it emulates hanging up, nothing else of the Call resource.
            raise invalid("Status", status or "", "the emulator supports only Status=completed")
        return jsonify(emulator.hang_up(account_sid, call_sid)), 200

    @app.post(f"{API_PREFIX}/<sid>.json")
    def update(account_sid: str, call_sid: str, sid: str):
        authenticate()
        check_path(account_sid, call_sid)
        status = request.form.get("Status")
        if status is None:
            raise ApiError(400, 20001, "Missing required parameter Status in the post body")
        if status != "stopped":
            raise invalid("Status", status, "must be stopped")
        transcription = emulator.stop(account_sid, call_sid, sid, request.path)
        return jsonify(transcription.resource()), 200

    @app.errorhandler(ApiError)
    def api_error(error: ApiError):
        return _error(error)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        # Unknown paths and wrong methods, in Twilio's shape; auth is checked first, as Twilio does.
        auth = request.authorization
        try:
            emulator.authenticate(auth.username if auth else None, auth.password if auth else None)
        except ApiError as failed:
            return _error(failed)
        if error.code == 405:
            return _error(ApiError(405, 20004, "Method not allowed"))
        return _error(not_found(request.path))

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *_args: object) -> None:
        pass


class _AccessLogHandler(WSGIRequestHandler):
    """One plain line per request through ``logging`` (werkzeug's own adds colour codes)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.info('%s "%s" %s', self.address_string(), self.requestline, code)


@dataclass
class EmulatorServer:
    """The emulator's HTTP server on a thread, for tests, ``simulate`` and ``demo``."""

    emulator: Emulator
    host: str = "127.0.0.1"
    port: int = 0
    access_log: bool = False
    _server: BaseWSGIServer | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> EmulatorServer:
        self._server = make_server(
            self.host,
            self.port,
            create_emulator_app(self.emulator),
            threaded=True,
            request_handler=_AccessLogHandler if self.access_log else _QuietHandler,
        )
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="emulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.emulator.shutdown()
        if self._server:
            self._server.shutdown()
            self._server.server_close()
        if self._thread:
            self._thread.join(5)

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
