"""The textbook receiver that `receiver bench` measures the receiver against: what a careful
engineer writes in an afternoon from Twilio's documentation and redis-py's.

Flask; the ``twilio`` package's ``RequestValidator.validate(request.url, request.form,
signature)``; redis-py (with hiredis installed, as it is here) and one Lua script that does
``SET NX`` on ``TranscriptionSid:SequenceId`` and, only when that set the key, two ``XADD``s
(the call's stream and a global stream); answers 204. No normalization, ordered finals, spool,
metrics or logs. It writes under its own key prefix (``PEER_PREFIX``), so it shares the
receiver's Redis without touching its keys. Served by gunicorn with the receiver's settings as
``receiver.devtools.bench.peer:create_app()``.
"""

from __future__ import annotations

import os

import redis
from flask import Flask, Response, abort, request
from twilio.request_validator import RequestValidator

from receiver.protocol import SIGNATURE_HEADER
from receiver.views.callback import CALLBACK_PATH

PEER_PREFIX = "peer"

# KEYS: dedup key, call stream, global stream; ARGV: retention seconds, then field, value, ...
SCRIPT = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], '*', unpack(fields))
redis.call('XADD', KEYS[3], 'MAXLEN', '~', '1000000', '*', unpack(fields))
return 1
"""


def create_app() -> Flask:
    """The WSGI app, reading ``REDIS_URL`` and ``TWILIO_AUTH_TOKEN`` like the receiver."""
    app = Flask(__name__)
    validator = RequestValidator(os.environ["TWILIO_AUTH_TOKEN"].split(",")[0])
    store = redis.Redis.from_url(os.environ["REDIS_URL"]).register_script(SCRIPT)

    @app.route(CALLBACK_PATH, methods=["POST"])
    def callback() -> Response:
        signature = request.headers.get(SIGNATURE_HEADER, "")
        if not validator.validate(request.url, request.form, signature):
            abort(403)
        form = request.form
        call_sid = form["CallSid"]
        fields = [item for pair in form.items() for item in pair]
        store(
            keys=[
                f"{PEER_PREFIX}:seen:{form['TranscriptionSid']}:{form.get('SequenceId', '')}",
                f"{PEER_PREFIX}:call:{{{call_sid}}}",
                f"{PEER_PREFIX}:events",
            ],
            args=[604800, *fields],
        )
        return Response(status=204)

    @app.route("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
