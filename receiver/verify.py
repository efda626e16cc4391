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
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


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


def verify(req: Request, settings: Settings) -> dict[str, list[str]]:
    """The callback's signed parameters, or a 403 when the signature does not hold."""
    form = _form_params(req)
    url = signed_url(req, settings)
    header = req.headers.get(SIGNATURE_HEADER)
    if header is None:
        note(outcome="signature_failure")
        raise Refused(403, f"missing {SIGNATURE_HEADER} header")
    if not signature.is_valid(
        url,
        form,
        header,
        settings.auth_tokens,
        req.headers.get(SIGNATURE_SETTINGS_HEADER),
    ):
        note(outcome="signature_failure")
        raise Refused(403, f"invalid {SIGNATURE_HEADER} for {url}")
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


def url_labels(req: Request) -> TrackLabels:
    """Track labels given on the callback URL, for content that arrives before ``started``."""
    if not req.query_string:  # the common case: no labels, nothing to parse
        return TrackLabels()
    return TrackLabels(req.args.get(LABEL_PARAMS[0]), req.args.get(LABEL_PARAMS[1]))
