"""Settings, read from the environment once, with errors that name the variable and the value."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from receiver.protocol import AUTH_TOKEN_LENGTH, SID_PATTERNS

PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}\Z")
DEFAULT_SPOOL_DIR = "var/spool"


class ConfigError(ValueError):
    """A setting is missing or has a value the receiver cannot use."""


@dataclass(frozen=True)
class Account:
    """One Twilio (sub)account of ``TWILIO_ACCOUNTS_FILE``: the tokens that may sign its
    callbacks, and the prefix its events are stored under (None: ``STREAM_PREFIX``)."""

    sid: str
    auth_tokens: tuple[str, ...]
    stream_prefix: str | None = None

    def __repr__(self) -> str:
        return (
            f"Account({self.sid!r}, auth_tokens=<{len(self.auth_tokens)} hidden>, "
            f"stream_prefix={self.stream_prefix!r})"
        )


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
    # Older callbacks are refused: a captured one replayed after its dedup memory expired
    # would be stored again. Never more than call_retention_seconds; exactly-once identities
    # live this long (+300 s) after a call's last event (docs/storage.md).
    max_event_age_seconds: int = 24 * 3600
    # Twilio's largest callback: a final result with TranscriptionProviderData's per-word
    # entries (word, start, end, confidence, punctuated_word, speaker...) costs 270 to 310
    # bytes a word form-encoded; one result of a 5-minute stream (Google's limit per stream)
    # at 3.3 words a second is 1,000 words, 300 KB. 1 MiB leaves over 3x that; a 413 is
    # never retried, so a limit too small would lose the longest utterances for good.
    max_body_bytes: int = 1024 * 1024
    # Durability when Redis cannot take an event in time (see receiver/storage/spool.py); None:
    # no spool, a Redis outage is answered 503.
    spool_dir: str | None = None
    spool_max_bytes: int = 1024**3
    redis_timeout_ms: int = 1000
    # From TWILIO_ACCOUNTS_FILE: many accounts, each with its own tokens (then auth_tokens is
    # empty and account_sid None).
    accounts: tuple[Account, ...] = ()

    @cached_property
    def _accounts_by_sid(self) -> dict[str, Account]:
        # Looked up on every callback (twice: whose tokens, then whether it is served): an ISV
        # may list thousands of subaccounts.
        return {account.sid: account for account in self.accounts}

    def account(self, sid: str | None) -> Account | None:
        """The account of ``TWILIO_ACCOUNTS_FILE`` with this SID, if any."""
        return self._accounts_by_sid.get(sid) if sid is not None else None

    def serves(self, sid: str | None) -> bool:
        """Whether this receiver takes callbacks of this AccountSid: one of the accounts file's,
        or ``TWILIO_ACCOUNT_SID``; any, when neither is set."""
        if self.accounts:
            return self.account(sid) is not None
        return self.account_sid is None or sid == self.account_sid

    def token_warnings(self) -> list[str]:
        """``token_warnings`` for every token: TWILIO_AUTH_TOKEN's and each account's."""
        warnings = token_warnings(self.auth_tokens)
        for account in self.accounts:
            warnings += token_warnings(account.auth_tokens, account.sid)
        return warnings

    def __repr__(self) -> str:
        # Tokens and Redis passwords must never reach a log or a traceback.
        return (
            f"Settings(auth_tokens=<{len(self.auth_tokens)} hidden>, accounts={self.accounts!r}, "
            f"account_sid={self.account_sid!r}, public_base_url={self.public_base_url!r}, "
            f"proxy_hops={self.proxy_hops}, redis_url={redact_url(self.redis_url)!r}, "
            f"stream_prefix={self.stream_prefix!r}, spool_dir={self.spool_dir!r})"
        )


def token_warnings(tokens: tuple[str, ...], account: str | None = None) -> list[str]:
    """Warnings for tokens that cannot be a Twilio auth token (32 characters): a placeholder
    or a pasted SID would leave every real callback refused. ``account``: the tokens are that
    account's in TWILIO_ACCOUNTS_FILE. The tokens are never shown."""
    whose = f" of account {account} in TWILIO_ACCOUNTS_FILE" if account else ""
    question = (
        "is it that account's token?"
        if account
        else "is TWILIO_AUTH_TOKEN (or its file) your account's token?"
    )
    return [
        f"auth token {n} of {len(tokens)}{whose} has {len(token)} characters, a Twilio auth "
        f"token has {AUTH_TOKEN_LENGTH}: {question}"
        for n, token in enumerate(tokens, 1)
        if len(token) != AUTH_TOKEN_LENGTH
    ]


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
            f"{name}={value} must be at most CALL_RETENTION_SECONDS={retention}: nothing may "
            "outlive the call's own keys (an event replayed after its identity expired would be "
            "stored again)"
        )
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name}={raw!r} must be 1 or 0 (true/false, yes/no)")


def redis_cluster_setting(env: Mapping[str, str], redis_url: str | None) -> bool:
    """REDIS_CLUSTER: whether ``redis_url`` names a node of a Redis Cluster."""
    redis_cluster = _flag(env, "REDIS_CLUSTER")
    if redis_cluster and (not redis_url or urlsplit(redis_url).scheme == "unix"):
        raise ConfigError(
            "REDIS_CLUSTER=1 needs REDIS_URL=redis://… or rediss://… naming a cluster node "
            f"(got {redact_url(redis_url)!r}; the embedded Redis is not a cluster)"
        )
    return redis_cluster


def secret(env: Mapping[str, str], name: str) -> str:
    """A secret from ``<name>_FILE`` (Docker and Kubernetes secrets) when that is set, else
    from ``<name>``; a file that cannot be read is a ConfigError naming it."""
    path = env.get(f"{name}_FILE", "").strip()
    if not path:
        return env.get(name, "")
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{name}_FILE={path!r} cannot be read: {error.strerror}") from None


def _tokens(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = secret(env, "TWILIO_AUTH_TOKEN")
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


ACCOUNT_FIELDS = ("auth_tokens", "stream_prefix")
SINGLE_ACCOUNT_VARIABLES = ("TWILIO_AUTH_TOKEN", "TWILIO_AUTH_TOKEN_FILE", "TWILIO_ACCOUNT_SID")


def _collide(a: str, b: str) -> bool:
    """Whether two prefixes' keys could mix, or a Redis ACL on ``a:*`` would reach into ``b``."""
    return a == b or a.startswith(b + ":") or b.startswith(a + ":")


def _account(sid: object, entry: object, where: str) -> Account:
    if not isinstance(sid, str) or not SID_PATTERNS["AccountSid"].match(sid):
        raise ConfigError(f"{where}: {sid!r} is not an AccountSid (AC + 32 hex digits)")
    where = f"{where}: {sid}"
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where} must map to {{auth_tokens: [...], stream_prefix: ...}}")
    unknown = sorted(set(map(str, entry)) - set(ACCOUNT_FIELDS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {', '.join(unknown)} (known: auth_tokens, stream_prefix)"
        )
    tokens = entry.get("auth_tokens")
    if (
        not isinstance(tokens, list)
        or not tokens
        or not all(isinstance(t, str) and t.strip() for t in tokens)
    ):
        raise ConfigError(
            f"{where}.auth_tokens must be a non-empty list of auth tokens (several during a "
            "rotation)"
        )
    prefix = entry.get("stream_prefix")
    if prefix is not None and (not isinstance(prefix, str) or not PREFIX_PATTERN.match(prefix)):
        raise ConfigError(
            f"{where}.stream_prefix={prefix!r} may hold only letters, digits and _ . : - (1 to 64)"
        )
    return Account(sid, tuple(t.strip() for t in tokens), prefix)


class _DuplicateKey(ValueError):
    pass


def _unique_pairs(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """A mapping in which no key appears twice: YAML and JSON parsers keep the last of two
    silently, so a pasted block would take over an account's tokens and prefix unseen."""
    mapping: dict[Any, Any] = {}
    for key, value in pairs:
        if key in mapping:
            raise _DuplicateKey(f"{key!r} appears twice")
        mapping[key] = value
    return mapping


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)
        pairs = [
            (self.construct_object(k, deep=deep), self.construct_object(v, deep=deep))
            for k, v in node.value
        ]
        return _unique_pairs(pairs)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping
)


def load_accounts(path: str, default_prefix: str) -> tuple[Account, ...]:
    """The accounts of ``TWILIO_ACCOUNTS_FILE`` (YAML, or JSON), or a ConfigError that names
    the file, the account and the field."""
    where = f"TWILIO_ACCOUNTS_FILE={path!r}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read: {exc.strerror}") from None
    try:
        if path.endswith(".json"):
            data = json.loads(text, object_pairs_hook=_unique_pairs)
        else:
            data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no Python objects
    except _DuplicateKey as exc:
        raise ConfigError(f"{where}: {exc}: each account, and each field, once") from None
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"{where} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: {exc}"
        ) from None
    if not isinstance(data, Mapping) or not data:
        raise ConfigError(f"{where} must map each AccountSid to its auth_tokens")
    accounts = tuple(_account(sid, entry, where) for sid, entry in data.items())
    owners = {default_prefix: "STREAM_PREFIX"}
    for account in accounts:
        prefix = account.stream_prefix
        if prefix is None:
            continue
        clash = next((owner for taken, owner in owners.items() if _collide(prefix, taken)), None)
        if clash:
            raise ConfigError(
                f"{where}: {account.sid}.stream_prefix={prefix!r} collides with {clash}'s "
                "prefix: each account with a prefix needs one of its own, not inside another's"
            )
        owners[prefix] = account.sid
    return accounts


def load_settings(env: Mapping[str, str] | None = None, *, require_token: bool = True) -> Settings:
    """Read every setting from ``env`` (default: the process environment)."""
    env = os.environ if env is None else env
    prefix = env.get("STREAM_PREFIX", "").strip() or "rtt"
    if not PREFIX_PATTERN.match(prefix):
        raise ConfigError(
            f"STREAM_PREFIX={prefix!r} may hold only letters, digits and _ . : - (1 to 64)"
        )
    accounts_file = env.get("TWILIO_ACCOUNTS_FILE", "").strip()
    accounts: tuple[Account, ...] = ()
    if accounts_file:
        both = [name for name in SINGLE_ACCOUNT_VARIABLES if env.get(name, "").strip()]
        if both:
            raise ConfigError(
                f"TWILIO_ACCOUNTS_FILE and {', '.join(both)} are both set: the accounts file "
                "names every account and its tokens, so unset the single-account variables"
            )
        accounts = load_accounts(accounts_file, prefix)
    tokens = _tokens(env)
    token_file = env.get("TWILIO_AUTH_TOKEN_FILE", "").strip()
    if require_token and not tokens and token_file:
        raise ConfigError(
            f"TWILIO_AUTH_TOKEN_FILE={token_file!r} is empty: put your account's auth token in it"
        )
    if require_token and not tokens and not accounts:
        raise ConfigError(
            "TWILIO_AUTH_TOKEN (or TWILIO_AUTH_TOKEN_FILE, or TWILIO_ACCOUNTS_FILE) is not set: "
            "the receiver cannot verify X-Twilio-Signature without your account's auth token"
        )
    account_sid = env.get("TWILIO_ACCOUNT_SID", "").strip() or None
    if account_sid and not SID_PATTERNS["AccountSid"].match(account_sid):
        raise ConfigError(f"TWILIO_ACCOUNT_SID={account_sid!r} does not match AC + 32 hex digits")
    redis_url = env.get("REDIS_URL", "").strip() or None
    if redis_url and urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"REDIS_URL={redact_url(redis_url)!r} must start with redis://, rediss:// or unix://"
        )
    redis_cluster = redis_cluster_setting(env, redis_url)
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
        accounts=accounts,
    )
