"""Request -> verified request: which URL and parameters Twilio signed, and whether it did.

Only parameters that a valid ``X-Twilio-Signature`` covers leave this module; nothing after it
looks at the raw request again.
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import parse_qs, quote

from flask import Request
from werkzeug.exceptions import HTTPException

from receiver import signature
from receiver.config import Settings
from receiver.events import TrackLabels
from receiver.observability.telemetry import note
from receiver.protocol import SIGNATURE_HEADER, SIGNATURE_SETTINGS_HEADER

# Optional labels on the callback URL's query string (the signature covers them).
LABEL_PARAMS = ("inbound_label", "outbound_label")
# Twilio sends its callbacks form-encoded, never multipart.
FORM_TYPE = "application/x-www-form-urlencoded"
# Twilio's largest callback, transcription-started, has 15 parameters; Twilio may add more,
# but a hundred is not a callback. Refused before any HMAC is computed.
MAX_PARAMS = 100
FORWARDED_SCHEMES = ("http", "https")


class Refused(HTTPException):
    """A 4xx or 5xx answer with a short reason, rendered as JSON."""

    def __init__(self, code: int, reason: str, **headers: str) -> None:
        super().__init__(reason)
        self.code = code
        self.extra_headers = headers


@lru_cache(maxsize=64)
def _quoted(path: str) -> str:
    """The path as Twilio signed it; the same few paths come every time, so cached."""
    return quote(path, safe="/!$&'()*+,;=:@-._~%")


def signed_url(req: Request, settings: Settings) -> str:
    """The URL Twilio signed: the public one, not necessarily the one this process sees.

    With ``PUBLIC_BASE_URL`` the scheme, host and prefix come from configuration; otherwise
    from the request, after ``ProxyFix`` has applied exactly ``PROXY_HOPS`` trusted hops. The
    query string is used byte for byte as received: re-encoding it breaks signatures.
    """
    path = _quoted(req.path if settings.public_base_url else req.root_path + req.path)
    base = settings.public_base_url or f"{req.scheme}://{req.host}"
    query = req.query_string.decode("utf-8", "replace")
    return f"{base}{path}?{query}" if query else f"{base}{path}"


def _candidate_tokens(account: str | None, settings: Settings) -> tuple[str, ...]:
    """The tokens that may have signed a callback claiming ``account``.

    With ``TWILIO_ACCOUNTS_FILE`` the claim (still unverified) only chooses whose tokens are
    tried: a callback signed by account A that claims account B fails B's tokens. A claim of
    an account not in the file gets the answer a bad signature gets, so that an unsigned request
    cannot learn which AccountSids this receiver serves (the log line and the metrics say
    ``wrong_account``)."""
    if not settings.accounts:
        return settings.auth_tokens
    found = settings.account(account)
    if found is None:
        note(outcome="wrong_account")
        raise _invalid_signature()
    return found.auth_tokens


def _invalid_signature() -> Refused:
    # The URL is not echoed: a GET callback's URL carries the transcript.
    return Refused(
        403,
        f"invalid {SIGNATURE_HEADER} (is PUBLIC_BASE_URL or PROXY_HOPS set so that the "
        "URL checked is the one Twilio called?)",
    )


def _signature(req: Request) -> str:
    """The signature header, refused when absent or malformed: before the body is read."""
    header = req.headers.get(SIGNATURE_HEADER)
    if header is None:
        note(outcome="signature_failure")
        raise Refused(403, f"missing {SIGNATURE_HEADER} header")
    if not signature.well_formed(header):
        note(outcome="signature_failure")
        raise Refused(403, f"{SIGNATURE_HEADER} is not a base64 signature")
    return header


def _count_params(raw: bytes, where: str) -> None:
    if raw.count(b"&") + 1 > MAX_PARAMS:
        raise Refused(400, f"more than {MAX_PARAMS} parameters in the {where}")


def _form_params(req: Request) -> dict[str, list[str]]:
    if req.method != "POST":
        return {}
    if not req.content_length and not req.headers.get("Transfer-Encoding"):
        raise Refused(400, "a callback POST carries its parameters in a form body; it has none")
    if req.mimetype != FORM_TYPE:
        raise Refused(415, f"callbacks are {FORM_TYPE}; got Content-Type {req.mimetype!r}")
    try:
        body = req.get_data()
    except HTTPException:
        raise  # 413: larger than MAX_BODY_BYTES
    except Exception as error:
        # The WSGI server's input stream failed: gunicorn raises its own ParseException for a
        # malformed chunked body, OSError for a client gone mid-body. A 400, not a 500.
        raise Refused(400, f"malformed request body ({type(error).__name__})") from None
    _count_params(body, "form body")
    try:
        text = body.decode()
    except ValueError:
        raise Refused(400, "the form body is not UTF-8") from None
    # What werkzeug's form parser does for this type, at a third of its cost (profiled).
    form = parse_qs(text, keep_blank_values=True, errors="werkzeug.url_quote")
    if not form:
        raise Refused(400, "a callback POST carries its parameters in a form body; it has none")
    return form


def verify(req: Request, settings: Settings) -> dict[str, list[str]]:
    """The callback's signed parameters, or a 4xx saying why not.

    The cheap checks come first (the header's form, the content type, the number of
    parameters), so a request that cannot be Twilio's costs no body parsing and no HMAC."""
    if req.method == "HEAD":
        # Flask answers HEAD with the GET view; a HEAD carrying a GET callback's signature
        # would store the event. Twilio never sends one.
        raise Refused(405, "callbacks are GET or POST", Allow="GET, POST")
    header = _signature(req)
    if settings.proxy_hops and req.scheme not in FORWARDED_SCHEMES:
        raise Refused(400, f"forwarded scheme {req.scheme[:20]!r} is not http or https")
    if req.method != "POST":
        _count_params(req.query_string, "query string")
    form = _form_params(req)
    url = signed_url(req, settings)
    if req.method == "POST":
        params = form
    else:
        params = req.args.to_dict(flat=False)
        for name in LABEL_PARAMS:
            params.pop(name, None)
    account = next(iter(params.get("AccountSid", ())), None)
    if not signature.is_valid(
        url,
        form,
        header,
        _candidate_tokens(account, settings),
        req.headers.get(SIGNATURE_SETTINGS_HEADER),
    ):
        note(outcome="signature_failure")
        raise _invalid_signature()
    if not params:
        raise Refused(400, "a callback GET carries its parameters in the query string")
    if not settings.serves(account):
        note(outcome="wrong_account")
        raise Refused(403, f"AccountSid {account!r} is not this receiver's account")
    # Signed by this account's token: a bounded label, safe for metrics.
    note(account_sid=account)
    return params


def url_labels(req: Request) -> TrackLabels:
    """Track labels given on the callback URL, for content that arrives before ``started``."""
    if not req.query_string:  # the common case: no labels, nothing to parse
        return TrackLabels()
    return TrackLabels(req.args.get(LABEL_PARAMS[0]), req.args.get(LABEL_PARAMS[1]))
