"""A loopback HTTP server that records callbacks and checks their signature independently,
with the twilio package's own ``RequestValidator``."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from flask import Flask, request
from twilio.request_validator import RequestValidator
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server


@dataclass(frozen=True)
class Received:
    method: str
    url: str
    params: dict[str, str]
    headers: dict[str, str]
    signature_valid: bool


class _Quiet(WSGIRequestHandler):
    def log_request(self, *_args: object) -> None:
        pass


@dataclass
class CallbackSink:
    token: str
    status: int = 200
    received: list[Received] = field(default_factory=list)
    _server: BaseWSGIServer | None = None

    def start(self) -> CallbackSink:
        app = Flask(__name__)

        @app.route("/callback", methods=["GET", "POST"])
        def callback():
            query = request.query_string.decode()
            url = f"http://{request.host}{request.path}" + (f"?{query}" if query else "")
            form = request.form.to_dict() if request.method == "POST" else {}
            valid = RequestValidator(self.token).validate(
                url, form, request.headers.get("X-Twilio-Signature", "")
            )
            params = form if request.method == "POST" else request.args.to_dict()
            self.received.append(
                Received(request.method, url, params, dict(request.headers), valid)
            )
            return "", self.status

        self._server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_Quiet)
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self._server
        return f"http://127.0.0.1:{self._server.server_port}/callback"

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def of(self, transcription_sid: str) -> list[Received]:
        return [r for r in self.received if r.params.get("TranscriptionSid") == transcription_sid]
