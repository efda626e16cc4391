"""Who may view transcripts (personal data), and the headers every answer carries."""

from __future__ import annotations

import base64
import binascii
import hmac

from flask import Flask, Response, g, request

from receiver.dashboard.settings import DashboardSettings

# No inline script or style anywhere: transcript text can never become code.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
OPEN_PATHS = ("/healthz", "/readyz")


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def check_basic(settings: DashboardSettings, header: str) -> str | None:
    """The user name when ``header`` carries the configured credentials, else None; both parts
    are compared in constant time, always, so the timing tells nothing about either."""
    credentials = _basic_credentials(header) or ("", "")
    user_ok = hmac.compare_digest(credentials[0].encode(), settings.username.encode())
    password_ok = hmac.compare_digest(credentials[1].encode(), (settings.password or "").encode())
    return credentials[0] if user_ok and password_ok and settings.password else None


def _unauthorized(settings: DashboardSettings) -> Response:
    response = Response("Authentication required\n", 401, mimetype="text/plain")
    if settings.auth == "basic":
        response.headers["WWW-Authenticate"] = 'Basic realm="rtt dashboard", charset="UTF-8"'
    return response


def install(app: Flask, settings: DashboardSettings) -> None:
    @app.before_request
    def authenticate() -> Response | None:
        g.user = None
        if request.path in OPEN_PATHS or settings.auth == "none":
            return None
        if settings.auth == "basic":
            g.user = check_basic(settings, request.headers.get("Authorization", ""))
        else:
            g.user = request.headers.get(settings.proxy_user_header, "").strip() or None
        return None if g.user else _unauthorized(settings)

    @app.after_request
    def secure(response: Response) -> Response:
        headers = response.headers
        headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        headers["X-Content-Type-Options"] = "nosniff"
        headers["X-Frame-Options"] = "DENY"
        headers["Referrer-Policy"] = "no-referrer"
        headers["Cross-Origin-Opener-Policy"] = "same-origin"
        headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
        if not request.path.startswith("/static/"):
            headers["Cache-Control"] = "no-store"  # transcripts stay out of shared caches
        return response
