"""The dashboard's settings, read from the environment, with errors that name the variable."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from receiver.config import (
    PREFIX_PATTERN,
    ConfigError,
    Settings,
    int_setting,
    redact_url,
    redis_cluster_setting,
    secret,
)
from receiver.server.network import is_loopback

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8020
AuthMode = Literal["basic", "proxy", "none"]


@dataclass(frozen=True)
class DashboardSettings:
    redis_url: str
    stream_prefix: str = "rtt"
    # REDIS_URL names a node of a Redis Cluster.
    redis_cluster: bool = False
    auth: AuthMode = "none"
    username: str = "rtt"
    password: str | None = None
    proxy_user_header: str = "X-Forwarded-User"
    recent_hours: int = 24
    # Events a viewer may lag behind before it is told to resynchronize.
    viewer_buffer: int = 2000
    # Finals below this confidence are marked (0-100, percent).
    low_confidence_percent: int = 60
    # Seconds a write to a viewer may wait before the viewer is dropped (it stopped reading).
    send_timeout: int = 30
    # The receiver's CALL_RETENTION_SECONDS: a call idle this long is no longer in progress,
    # even while no event has come to trim it from rtt:calls:active.
    call_retention_seconds: int = Settings.call_retention_seconds

    def __repr__(self) -> str:
        # The password must never reach a log or a traceback.
        return (
            f"DashboardSettings(redis_url={redact_url(self.redis_url)!r}, "
            f"stream_prefix={self.stream_prefix!r}, redis_cluster={self.redis_cluster}, "
            f"auth={self.auth!r}, "
            f"username={self.username!r}, password={'<hidden>' if self.password else None})"
        )


def load_dashboard_settings(env: Mapping[str, str] | None = None) -> DashboardSettings:
    """Every setting of the dashboard from ``env`` (default: the process environment)."""
    env = os.environ if env is None else env
    redis_url = env.get("REDIS_URL", "").strip()
    if not redis_url:
        raise ConfigError("REDIS_URL is not set: the dashboard reads the receiver's Redis")
    if urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"REDIS_URL={redact_url(redis_url)!r} must start with redis://, rediss:// or unix://"
        )
    prefix = env.get("STREAM_PREFIX", "").strip() or "rtt"
    if not PREFIX_PATTERN.match(prefix):
        raise ConfigError(
            f"STREAM_PREFIX={prefix!r} may hold only letters, digits and _ . : - (1 to 64)"
        )
    password = secret(env, "DASHBOARD_PASSWORD").strip() or None
    mode = env.get("DASHBOARD_AUTH", "").strip().lower()
    if mode not in ("", "basic", "proxy"):
        raise ConfigError(f"DASHBOARD_AUTH={mode!r} must be basic or proxy (or unset)")
    if mode == "basic" and not password:
        raise ConfigError(
            "DASHBOARD_AUTH=basic needs DASHBOARD_PASSWORD (or DASHBOARD_PASSWORD_FILE)"
        )
    auth: AuthMode = "proxy" if mode == "proxy" else ("basic" if password else "none")
    username = env.get("DASHBOARD_USERNAME", "").strip() or "rtt"
    if ":" in username:
        raise ConfigError(f"DASHBOARD_USERNAME={username!r} must not contain ':' (basic auth)")
    header = env.get("DASHBOARD_PROXY_USER_HEADER", "").strip() or "X-Forwarded-User"
    return DashboardSettings(
        redis_url=redis_url,
        stream_prefix=prefix,
        redis_cluster=redis_cluster_setting(env, redis_url),
        auth=auth,
        username=username,
        password=password,
        proxy_user_header=header,
        recent_hours=int_setting(env, "DASHBOARD_RECENT_HOURS", 24, 1),
        viewer_buffer=int_setting(env, "DASHBOARD_VIEWER_BUFFER", 2000, 10),
        low_confidence_percent=int_setting(env, "DASHBOARD_LOW_CONFIDENCE", 60, 0),
        send_timeout=int_setting(env, "DASHBOARD_SEND_TIMEOUT", 30, 1),
        call_retention_seconds=int_setting(
            env, "CALL_RETENTION_SECONDS", Settings.call_retention_seconds, 60
        ),
    )


def check_exposure(settings: DashboardSettings, host: str) -> None:
    """Transcripts are personal data: refuse to listen beyond loopback without authentication."""
    if settings.auth == "none" and not is_loopback(host):
        raise ConfigError(
            f"the dashboard would listen on {host!r} without authentication: set "
            "DASHBOARD_PASSWORD (or DASHBOARD_PASSWORD_FILE), or DASHBOARD_AUTH=proxy behind an "
            "authenticating proxy, or listen on 127.0.0.1"
        )
