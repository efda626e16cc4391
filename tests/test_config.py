import pytest

from receiver.config import ConfigError, load_settings, redact_url

BASE = {"TWILIO_AUTH_TOKEN": "tok", "REDIS_URL": "redis://localhost:6379/0"}


def test_defaults():
    s = load_settings(BASE)
    assert s.auth_tokens == ("tok",)
    assert s.proxy_hops == 0
    assert s.stream_prefix == "rtt"
    assert s.public_base_url is None


def test_comma_separated_tokens_for_rotation():
    s = load_settings(dict(BASE, TWILIO_AUTH_TOKEN=" new , old ,"))
    assert s.auth_tokens == ("new", "old")


def test_token_file(tmp_path):
    f = tmp_path / "token"
    f.write_text("secret-from-file\n")
    s = load_settings({"TWILIO_AUTH_TOKEN_FILE": str(f)})
    assert s.auth_tokens == ("secret-from-file",)


def test_unreadable_token_file_names_the_variable(tmp_path):
    with pytest.raises(ConfigError, match="TWILIO_AUTH_TOKEN_FILE"):
        load_settings({"TWILIO_AUTH_TOKEN_FILE": str(tmp_path / "missing")})


def test_refuses_without_token():
    with pytest.raises(ConfigError, match="TWILIO_AUTH_TOKEN"):
        load_settings({"REDIS_URL": "redis://x"})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PROXY_HOPS", "two", "PROXY_HOPS='two' is not a whole number"),
        ("PROXY_HOPS", "-1", "at least 0"),
        ("PUBLIC_BASE_URL", "example.com", "absolute http"),
        ("PUBLIC_BASE_URL", "https://example.com/?a=1", "query string"),
        ("TWILIO_ACCOUNT_SID", "AC123", r"AC \+ 32 hex"),
        ("STREAM_PREFIX", "bad prefix", "STREAM_PREFIX"),
        ("REDIS_URL", "http://localhost", "REDIS_URL"),
        ("MAX_BODY_BYTES", "10", "at least 1024"),
    ],
)
def test_bad_values_name_the_variable_and_value(name, value, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(dict(BASE, **{name: value}))


def test_public_base_url_trailing_slash_removed():
    s = load_settings(dict(BASE, PUBLIC_BASE_URL="https://example.com/rtt/"))
    assert s.public_base_url == "https://example.com/rtt"


def test_repr_hides_secrets():
    s = load_settings(
        dict(BASE, TWILIO_AUTH_TOKEN="supersecret", REDIS_URL="redis://user:hunter2@host:6379/0")
    )
    assert "supersecret" not in repr(s)
    assert "hunter2" not in repr(s)
    assert redact_url("rediss://u:p@h:1/0") == "rediss://u:***@h:1/0"


def test_partials_retention_and_event_age_defaults():
    s = load_settings(BASE)
    assert (s.partials_retention_seconds, s.max_event_age_seconds) == (300, 86400)
    # Unset, neither outlives a short call retention.
    s = load_settings(dict(BASE, CALL_RETENTION_SECONDS="120"))
    assert (s.partials_retention_seconds, s.max_event_age_seconds) == (120, 120)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PARTIALS_RETENTION_SECONDS": "0"}, "PARTIALS_RETENTION_SECONDS='0' must be at least 1"),
        ({"PARTIALS_RETENTION_SECONDS": "5m"}, "is not a whole number"),
        (
            {"CALL_RETENTION_SECONDS": "3600", "PARTIALS_RETENTION_SECONDS": "3601"},
            "PARTIALS_RETENTION_SECONDS=3601 must be at most CALL_RETENTION_SECONDS=3600",
        ),
        (
            {"CALL_RETENTION_SECONDS": "3600", "MAX_EVENT_AGE_SECONDS": "86400"},
            "MAX_EVENT_AGE_SECONDS=86400 must be at most CALL_RETENTION_SECONDS=3600",
        ),
        ({"MAX_EVENT_AGE_SECONDS": "0"}, "MAX_EVENT_AGE_SECONDS='0' must be at least 1"),
    ],
)
def test_retention_bounds_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(dict(BASE, **env))
