"""Settings, read from the environment once, with errors that name the variable and the value."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from receiver.protocol import SID_PATTERNS

PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
DEFAULT_SPOOL_DIR = "var/spool"


class ConfigError(ValueError):
    """A setting is missing or has a value the receiver cannot use."""


@dataclass(frozen=True)
class Settings:
    auth_tokens: tuple[str, ...]
    account_sid: str | None = None
    public_base_url: str | None = None
    proxy_hops: int = 0
    redis_url: str | None = None
    redis_cluster: bool = False
    stream_prefix: str = "rtt"
    events_maxlen: int = 1_000_000
    rejected_maxlen: int = 100_000
    call_retention_seconds: int = 7 * 24 * 3600
    # Partial results are a live feed: kept this long after each one (docs/storage.md).
    partials_retention_seconds: int = 300
    # Older events are refused; exactly-once identities live this long (+300 s) after a call.
    max_event_age_seconds: int = 24 * 3600
    max_body_bytes: int = 256 * 1024
    # Durability when Redis cannot take an event in time (see receiver/spool.py); None: no spool,
    # a Redis outage is answered 503.
    spool_dir: str | None = None
    spool_max_bytes: int = 1024**3
    redis_timeout_ms: int = 1000

    def __repr__(self) -> str:
        # Tokens and Redis passwords must never reach a log or a traceback.
        return (
            f"Settings(auth_tokens=<{len(self.auth_tokens)} hidden>, "
            f"account_sid={self.account_sid!r}, public_base_url={self.public_base_url!r}, "
            f"proxy_hops={self.proxy_hops}, redis_url={redact_url(self.redis_url)!r}, "
            f"stream_prefix={self.stream_prefix!r}, spool_dir={self.spool_dir!r})"
        )


def redact_url(url: str | None) -> str | None:
    """The URL with its password replaced, for messages and logs."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def int_setting(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    """A whole-number setting, or a ConfigError that names the variable and the value."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be at least {minimum}")
    return value


def _within_retention(env: Mapping[str, str], name: str, default: int, retention: int) -> int:
    """A duration that must not outlive the call's data (``CALL_RETENTION_SECONDS``); unset, it
    is its default or the retention, whichever is shorter."""
    value = int_setting(env, name, min(default, retention), 1)
    if value > retention:
        raise ConfigError(
            f"{name}={value} must be at most CALL_RETENTION_SECONDS={retention}: "
            "nothing may outlive the call's own keys"
        )
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name}={raw!r} must be 1 or 0 (true/false, yes/no)")


def _tokens(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get("TWILIO_AUTH_TOKEN", "")
    path = env.get("TWILIO_AUTH_TOKEN_FILE", "").strip()
    if path:
        try:
            raw = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"TWILIO_AUTH_TOKEN_FILE={path!r} cannot be read: {exc.strerror}"
            ) from None
    return tuple(t.strip() for t in raw.replace("\n", ",").split(",") if t.strip())


def _public_base_url(env: Mapping[str, str]) -> str | None:
    raw = env.get("PUBLIC_BASE_URL", "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"PUBLIC_BASE_URL={raw!r} must be an absolute http(s) URL such as "
            "'https://rtt.example.com' or 'https://example.com/rtt'"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"PUBLIC_BASE_URL={raw!r} must not have a query string or fragment")
    return raw.rstrip("/")


def _spool_dir(env: Mapping[str, str]) -> str | None:
    raw = env.get("SPOOL_DIR", "").strip()
    if raw.lower() == "off":
        return None
    return raw or DEFAULT_SPOOL_DIR


def load_settings(env: Mapping[str, str] | None = None, *, require_token: bool = True) -> Settings:
    """Read every setting from ``env`` (default: the process environment)."""
    env = os.environ if env is None else env
    tokens = _tokens(env)
    if require_token and not tokens:
        raise ConfigError(
            "TWILIO_AUTH_TOKEN (or TWILIO_AUTH_TOKEN_FILE) is not set: the receiver cannot "
            "verify X-Twilio-Signature without your account's auth token"
        )
    account_sid = env.get("TWILIO_ACCOUNT_SID", "").strip() or None
    if account_sid and not SID_PATTERNS["AccountSid"].match(account_sid):
        raise ConfigError(f"TWILIO_ACCOUNT_SID={account_sid!r} does not match AC + 32 hex digits")
    prefix = env.get("STREAM_PREFIX", "").strip() or "rtt"
    if not PREFIX_PATTERN.match(prefix):
        raise ConfigError(
            f"STREAM_PREFIX={prefix!r} may hold only letters, digits and _ . : - (1 to 64)"
        )
    redis_url = env.get("REDIS_URL", "").strip() or None
    if redis_url and urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"REDIS_URL={redact_url(redis_url)!r} must start with redis://, rediss:// or unix://"
        )
    redis_cluster = _flag(env, "REDIS_CLUSTER")
    if redis_cluster and (not redis_url or urlsplit(redis_url).scheme == "unix"):
        raise ConfigError(
            "REDIS_CLUSTER=1 needs REDIS_URL=redis://… or rediss://… naming a cluster node "
            f"(got {redact_url(redis_url)!r}; the embedded Redis is not a cluster)"
        )
    retention = int_setting(env, "CALL_RETENTION_SECONDS", Settings.call_retention_seconds, 60)
    return Settings(
        auth_tokens=tokens,
        account_sid=account_sid,
        public_base_url=_public_base_url(env),
        proxy_hops=int_setting(env, "PROXY_HOPS", 0, 0),
        redis_url=redis_url,
        redis_cluster=redis_cluster,
        stream_prefix=prefix,
        events_maxlen=int_setting(env, "EVENTS_MAXLEN", Settings.events_maxlen, 1),
        rejected_maxlen=int_setting(env, "REJECTED_MAXLEN", Settings.rejected_maxlen, 1),
        call_retention_seconds=retention,
        partials_retention_seconds=_within_retention(
            env, "PARTIALS_RETENTION_SECONDS", Settings.partials_retention_seconds, retention
        ),
        max_event_age_seconds=_within_retention(
            env, "MAX_EVENT_AGE_SECONDS", Settings.max_event_age_seconds, retention
        ),
        max_body_bytes=int_setting(env, "MAX_BODY_BYTES", Settings.max_body_bytes, 1024),
        spool_dir=_spool_dir(env),
        spool_max_bytes=int_setting(env, "SPOOL_MAX_BYTES", Settings.spool_max_bytes, 64 * 1024),
        redis_timeout_ms=int_setting(env, "REDIS_TIMEOUT_MS", Settings.redis_timeout_ms, 10),
    )
