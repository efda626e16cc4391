"""Many accounts on one receiver (TWILIO_ACCOUNTS_FILE): each callback is checked against the
tokens of the AccountSid it claims, and stored under that account's own prefix."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from receiver import create_app
from receiver.cli import main
from receiver.config import ConfigError, load_settings
from receiver.events import parse
from receiver.storage import account_stores, open_store
from receiver.storage.durable import Drainer, DurableWriter
from receiver.storage.spool import Spool

from .support.twilio_calls import callback, content, post, sid, started

ACCOUNT_A = "AC" + "a" * 32
ACCOUNT_B = "AC" + "b" * 32
ACCOUNT_C = "AC" + "c" * 32
TOKEN_A, TOKEN_A_NEXT, TOKEN_B = "token-a", "token-a-next", "token-b"
ACCOUNTS = {
    ACCOUNT_A: {"auth_tokens": [TOKEN_A, TOKEN_A_NEXT], "stream_prefix": "tenant-a"},
    ACCOUNT_B: {"auth_tokens": [TOKEN_B]},  # no prefix of its own: STREAM_PREFIX
}


def write_accounts(path: Path, accounts: dict = ACCOUNTS) -> str:
    if path.suffix == ".json":
        path.write_text(json.dumps(accounts))
    else:
        lines = []
        for account, entry in accounts.items():
            lines.append(f"{account}:")
            lines.append(f"  auth_tokens: {json.dumps(entry['auth_tokens'])}")
            if "stream_prefix" in entry:
                lines.append(f"  stream_prefix: {entry['stream_prefix']}")
        path.write_text("\n".join(lines) + "\n")
    return str(path)


def settings_with(path: str, **env: str):
    return load_settings({"TWILIO_ACCOUNTS_FILE": path, **env})


# -- the file ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["accounts.yaml", "accounts.json"])
def test_file_is_read_as_yaml_or_json(tmp_path, name):
    s = settings_with(write_accounts(tmp_path / name))
    assert s.auth_tokens == () and s.account_sid is None
    a, b = s.account(ACCOUNT_A), s.account(ACCOUNT_B)
    assert a and a.auth_tokens == (TOKEN_A, TOKEN_A_NEXT) and a.stream_prefix == "tenant-a"
    assert b and b.auth_tokens == (TOKEN_B,) and b.stream_prefix is None
    assert s.account(ACCOUNT_C) is None
    assert TOKEN_A not in repr(s) and TOKEN_B not in repr(s)


@pytest.mark.parametrize(
    ("accounts", "message"),
    [
        ({"AC123": {"auth_tokens": ["x"]}}, r"'AC123' is not an AccountSid"),
        ({ACCOUNT_A: {"auth_tokens": []}}, r"auth_tokens must be a non-empty list"),
        ({ACCOUNT_A: {"auth_tokens": "one-token"}}, r"auth_tokens must be a non-empty list"),
        ({ACCOUNT_A: {"auth_tokens": [""]}}, r"auth_tokens must be a non-empty list"),
        ({ACCOUNT_A: {"auth_token": ["x"]}}, r"unknown field\(s\) auth_token"),
        ({ACCOUNT_A: ["x"]}, r"must map to"),
        ({ACCOUNT_A: {"auth_tokens": ["x"], "stream_prefix": "a b"}}, r"stream_prefix='a b'"),
        ({ACCOUNT_A: {"auth_tokens": ["x"], "stream_prefix": "rtt"}}, r"collides with STREAM_"),
        (
            {
                ACCOUNT_A: {"auth_tokens": ["x"], "stream_prefix": "t"},
                ACCOUNT_B: {"auth_tokens": ["y"], "stream_prefix": "t"},
            },
            r"'t' collides with " + ACCOUNT_A,
        ),
        (
            {
                ACCOUNT_A: {"auth_tokens": ["x"], "stream_prefix": "t"},
                ACCOUNT_B: {"auth_tokens": ["y"], "stream_prefix": "t:b"},
            },
            r"'t:b' collides with " + ACCOUNT_A,
        ),
        ({}, r"must map each AccountSid"),
    ],
)
def test_bad_files_are_refused_with_the_reason(tmp_path, accounts, message):
    path = tmp_path / "accounts.json"
    path.write_text(json.dumps(accounts))
    with pytest.raises(ConfigError, match=message) as caught:
        settings_with(str(path))
    assert "TWILIO_ACCOUNTS_FILE=" in str(caught.value)


def test_unreadable_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        settings_with(str(tmp_path / "missing.yaml"))
    (tmp_path / "broken.yaml").write_text(f"{ACCOUNT_A}: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        settings_with(str(tmp_path / "broken.yaml"))


@pytest.mark.parametrize(
    "variable", ["TWILIO_AUTH_TOKEN", "TWILIO_AUTH_TOKEN_FILE", "TWILIO_ACCOUNT_SID"]
)
def test_a_start_with_both_kinds_is_refused(tmp_path, variable):
    path = write_accounts(tmp_path / "accounts.yaml")
    with pytest.raises(ConfigError, match=f"TWILIO_ACCOUNTS_FILE and {variable} are both set"):
        settings_with(path, **{variable: ACCOUNT_C if "SID" in variable else "x"})


def test_the_cli_refuses_a_bad_file_before_starting(tmp_path):
    path = tmp_path / "accounts.json"
    path.write_text(json.dumps({ACCOUNT_A: {"auth_tokens": []}}))
    result = CliRunner().invoke(
        main,
        ["serve"],
        env={"TWILIO_ACCOUNTS_FILE": str(path), "TWILIO_AUTH_TOKEN": "", "REDIS_URL": "redis://x"},
    )
    assert result.exit_code == 1
    assert "auth_tokens must be a non-empty list" in result.output


# -- the receiver -----------------------------------------------------------------------------


@pytest.fixture
def multi(tmp_path, redis_server, redis_client):
    s = settings_with(write_accounts(tmp_path / "accounts.yaml"), REDIS_URL=redis_server.url)
    app = create_app(s)
    app.config.update(TESTING=True)
    return app.test_client()


def signed_as(account: str, params: dict) -> dict:
    return {**params, "AccountSid": account}


def test_each_account_is_stored_under_its_own_prefix(multi, redis_client):
    call_a, call_b, gt = sid("CA"), sid("CA"), sid("GT")
    for seq, token in ((1, TOKEN_A), (2, TOKEN_A_NEXT)):  # either token of A, in a rotation
        params = signed_as(ACCOUNT_A, content(call_a, gt, seq, "hello from a"))
        assert post(multi, params, token=token).status_code == 200
    params = signed_as(ACCOUNT_B, content(call_b, sid("GT"), 1, "hello from b"))
    assert post(multi, params, token=TOKEN_B).status_code == 200
    a = redis_client.xrange("tenant-a:events")
    assert [(f["account_sid"], f["call_sid"]) for _, f in a] == [(ACCOUNT_A, call_a)] * 2
    assert redis_client.xlen(f"tenant-a:call:{{{call_a}}}") == 2
    b = redis_client.xrange("rtt:events")
    assert [(f["account_sid"], f["call_sid"]) for _, f in b] == [(ACCOUNT_B, call_b)]
    assert not redis_client.exists(f"rtt:call:{{{call_a}}}")
    assert not redis_client.keys(f"tenant-a:*{call_b}*")


def test_a_signature_of_another_account_is_refused(multi, redis_client):
    # Valid for account A's token, but the callback claims account B: B's tokens decide.
    params = signed_as(ACCOUNT_B, content(sid("CA"), sid("GT"), 1, "forged"))
    response = post(multi, params, token=TOKEN_A)
    assert response.status_code == 403
    assert "invalid X-Twilio-Signature" in response.get_json()["error"]
    # An account not in the file is answered as a bad signature: an unsigned request cannot
    # learn which AccountSids the receiver serves.
    stranger = signed_as(ACCOUNT_C, content(sid("CA"), sid("GT"), 1, "who?"))
    response = post(multi, stranger, token=TOKEN_A)
    assert response.status_code == 403
    assert response.get_json() == post(multi, params, token=TOKEN_A).get_json()
    assert ACCOUNT_C not in response.get_data(as_text=True)
    assert redis_client.keys("*") == []


def test_dead_letters_go_to_the_account_s_prefix(multi, redis_client):
    bad = signed_as(ACCOUNT_A, callback("content", sid("CA"), sid("GT"), 1, Final="maybe"))
    assert post(multi, bad, token=TOKEN_A).status_code == 400
    assert redis_client.xlen("tenant-a:rejected") == 1
    assert not redis_client.exists("rtt:rejected")


def test_metrics_and_log_line_carry_the_account_never_a_token(multi, caplog, monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    params = signed_as(ACCOUNT_A, content(sid("CA"), sid("GT"), 1, "metered"))
    with caplog.at_level(logging.INFO, logger="receiver.callbacks"):
        assert post(multi, params, token=TOKEN_A).status_code == 200
    (line,) = [r for r in caplog.records if r.name == "receiver.callbacks"]
    assert line.fields["account_sid"] == ACCOUNT_A
    text = multi.get("/metrics").get_data(as_text=True)
    assert f'rtt_account_callbacks_total{{account_sid="{ACCOUNT_A}",outcome="stored"}}' in text
    for token in (TOKEN_A, TOKEN_A_NEXT, TOKEN_B):
        assert token not in text and token not in caplog.text
    # A claimed but unproven AccountSid never becomes a label.
    post(multi, signed_as(ACCOUNT_C, params), token=TOKEN_A)
    assert ACCOUNT_C not in multi.get("/metrics").get_data(as_text=True)


def spooled_during_an_outage(tmp_path, own_redis) -> tuple[Spool, str, str]:
    """A call of account A and one of B, accepted into the spool while Redis was down."""
    s = settings_with(write_accounts(tmp_path / "accounts.yaml"), REDIS_URL=own_redis.url)
    store = open_store(s)
    spool = Spool(tmp_path / "spool")
    writer = DurableWriter(store, spool, account_stores(s, store))
    call_a, call_b = sid("CA"), sid("CA")
    own_redis.kill()
    for account, call in ((ACCOUNT_A, call_a), (ACCOUNT_B, call_b)):
        params = signed_as(account, content(call, sid("GT"), 1, "while redis was down"))
        event = parse({k: [v] for k, v in params.items()}, received_at="2026-11-28T09:00:00Z")
        assert writer.write(event) == "spooled"
    own_redis.start()
    return spool, call_a, call_b


def test_spooled_records_replay_under_their_account_s_prefix(tmp_path, own_redis):
    spool, call_a, call_b = spooled_during_an_outage(tmp_path, own_redis)
    s = settings_with(str(tmp_path / "accounts.yaml"), REDIS_URL=own_redis.url)
    store = open_store(s)
    drainer = Drainer(DurableWriter(store, spool, account_stores(s, store), s.serves))
    with spool.drain_lock() as held:
        assert held and drainer.drain()
    client = redis.Redis.from_url(own_redis.url, decode_responses=True)
    assert [f["call_sid"] for _, f in client.xrange("tenant-a:events")] == [call_a]
    assert [f["call_sid"] for _, f in client.xrange("rtt:events")] == [call_b]


def test_calls_in_progress_count_every_account_s_prefix(multi, monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    for account, token in ((ACCOUNT_A, TOKEN_A), (ACCOUNT_A, TOKEN_A), (ACCOUNT_B, TOKEN_B)):
        params = signed_as(account, started(sid("CA"), sid("GT")))
        assert post(multi, params, token=token).status_code == 200
    text = multi.get("/metrics").get_data(as_text=True)
    assert "\nrtt_calls_in_progress 3.0\n" in text  # two under tenant-a:, one under rtt:


def test_a_spooled_record_of_an_account_since_removed_is_set_aside_not_misfiled(
    tmp_path, own_redis, caplog
):
    spool, call_a, call_b = spooled_during_an_outage(tmp_path, own_redis)
    # A restarts without account A: its record must not land under B's (or anyone's) prefix.
    after = settings_with(
        write_accounts(tmp_path / "after.yaml", {ACCOUNT_B: ACCOUNTS[ACCOUNT_B]}),
        REDIS_URL=own_redis.url,
    )
    store = open_store(after)
    drainer = Drainer(DurableWriter(store, spool, account_stores(after, store), after.serves))
    with caplog.at_level(logging.ERROR), spool.drain_lock() as held:
        assert held and drainer.drain()
    client = redis.Redis.from_url(own_redis.url, decode_responses=True)
    assert [f["call_sid"] for _, f in client.xrange("rtt:events")] == [call_b]
    assert not client.keys(f"*{call_a}*") and not client.exists("tenant-a:events")
    [kept] = (tmp_path / "spool" / "spool.unrouted").read_text().splitlines()
    assert call_a in kept
    assert f"AccountSid {ACCOUNT_A} is not one of this receiver's accounts" in caplog.text
    assert not spool.pending()


@pytest.mark.parametrize(
    ("name", "text"),
    [
        (
            "accounts.yaml",
            f"{ACCOUNT_A}:\n  auth_tokens: [a]\n  stream_prefix: tenant-a\n"
            f"{ACCOUNT_A}:\n  auth_tokens: [b]\n  stream_prefix: tenant-b\n",
        ),
        (
            "accounts.json",
            f'{{"{ACCOUNT_A}": {{"auth_tokens": ["a"]}}, "{ACCOUNT_A}": {{"auth_tokens": ["b"]}}}}',
        ),
        ("accounts.yaml", f"{ACCOUNT_A}:\n  auth_tokens: [a]\n  auth_tokens: [b]\n"),
    ],
)
def test_an_account_or_field_given_twice_is_refused_not_overwritten(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match="appears twice: each account, and each field, once"):
        settings_with(str(path))
