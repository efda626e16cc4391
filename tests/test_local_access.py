"""Other users of the machine and other endpoints of the account: the embedded Redis' password
and files, the spool's modes, `receiver serve` on a public address, settings that guard them."""

from __future__ import annotations

import logging
import stat
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from receiver import create_app
from receiver.cli import main
from receiver.config import Account, ConfigError, Settings, load_settings, token_warnings
from receiver.server.embedded_redis import EmbeddedRedis
from receiver.server.network import is_loopback
from receiver.storage.spool import Spool, SpoolError

from .support.twilio_calls import TOKEN, callback, sid


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- the embedded Redis -----------------------------------------------------------------------


def test_the_embedded_redis_refuses_clients_without_its_password(redis_server: EmbeddedRedis):
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=redis_server.port).ping()
    assert redis.Redis.from_url(redis_server.url).ping()  # the fixture's URL carries it


def test_the_password_is_in_a_private_file_not_on_the_command_line(redis_server: EmbeddedRedis):
    assert mode(redis_server.data_dir) == 0o700
    auth = redis_server.data_dir / "auth.conf"
    assert mode(auth) == 0o600
    assert redis_server.password in auth.read_text()
    assert redis_server.process is not None
    cmdline = Path(f"/proc/{redis_server.process.pid}/cmdline").read_bytes()
    assert redis_server.password.encode() not in cmdline


def test_an_existing_open_data_directory_is_tightened(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    (data / "auth.conf").write_text("old\n")
    (data / "auth.conf").chmod(0o644)
    server = EmbeddedRedis(data).start()
    try:
        assert mode(data) == 0o700
        assert mode(data / "auth.conf") == 0o600
        assert server.client().ping()
    finally:
        server.stop()


# -- the spool ----------------------------------------------------------------------------------


def _spool_one(spool: Spool) -> None:
    from receiver.events import parse

    params = callback("stopped", "CA" + "5" * 32, sid("GT"), 4)
    spool.append(parse({k: [v] for k, v in params.items()}, received_at="2026-12-01T00:00:00Z"))


def test_spool_files_are_private(tmp_path: Path):
    spool = Spool(tmp_path / "spool")
    _spool_one(spool)
    generation, entries = spool.read_batch()
    spool.confirm(generation, entries[-1].end)
    spool.quarantine(entries[0])
    assert mode(spool.directory) == 0o700
    for name in ("spool.log", "spool.lock", "cursor", "spool.unreadable"):
        assert mode(spool.directory / name) == 0o600, name


def test_a_spool_directory_others_can_read_is_tightened(tmp_path: Path):
    directory = tmp_path / "spool"
    directory.mkdir()
    directory.chmod(0o755)  # as the Dockerfile creates it
    (directory / "spool.log").write_bytes(b"")
    (directory / "spool.log").chmod(0o644)
    Spool(directory)
    assert mode(directory) == 0o700
    assert mode(directory / "spool.log") == 0o600


@pytest.mark.skipif(not Path("/proc/self/fdinfo").is_dir(), reason="needs Linux /proc")
def test_a_spool_directory_others_can_read_and_we_cannot_tighten_is_refused():
    # /proc/self/fdinfo is 0555 and refuses chmod even to root: a directory not ours to fix.
    with pytest.raises(SpoolError, match=r"SPOOL_DIR=.*readable by other users"):
        Spool(Path("/proc/self/fdinfo"))


# -- who picks the checked URL ------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "rtt.example.com"])
def test_serve_refuses_the_network_without_a_public_url_or_proxy_hops(tmp_path, host):
    env = {
        "TWILIO_AUTH_TOKEN": TOKEN,
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "PUBLIC_BASE_URL": None,
        "PROXY_HOPS": None,
    }
    data = tmp_path / "redis"
    result = CliRunner().invoke(
        main, ["serve", "--host", host, "--port", "1", "--data-dir", str(data)], env=env
    )
    assert result.exit_code != 0
    assert "PUBLIC_BASE_URL" in result.output and "PROXY_HOPS" in result.output
    assert not data.exists()  # refused before anything was started


def test_loopback_hosts():
    assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.1", "example.com", ""]))


# -- settings -----------------------------------------------------------------------------------


def test_max_event_age_default_and_bounds():
    base = {"TWILIO_AUTH_TOKEN": TOKEN}
    assert load_settings(base).max_event_age_seconds == 86_400
    assert load_settings({**base, "MAX_EVENT_AGE_SECONDS": "600"}).max_event_age_seconds == 600
    # A retention shorter than the default age shortens the default with it...
    short = load_settings({**base, "CALL_RETENTION_SECONDS": "60"})
    assert short.max_event_age_seconds == 60
    # ...but an age set longer than the retention is refused: replays would be stored again.
    with pytest.raises(ConfigError, match="AGE_SECONDS=120 must be at most CALL_RETENTION"):
        load_settings({**base, "CALL_RETENTION_SECONDS": "60", "MAX_EVENT_AGE_SECONDS": "120"})
    with pytest.raises(ConfigError, match="MAX_EVENT_AGE_SECONDS"):
        load_settings({**base, "MAX_EVENT_AGE_SECONDS": "a day"})


def test_a_token_that_cannot_be_twilios_is_warned_about_without_showing_it(settings, caplog):
    assert token_warnings(("a" * 32,)) == []
    with caplog.at_level(logging.WARNING, logger="receiver.app"):
        create_app(settings)
    warnings = [r.getMessage() for r in caplog.records if r.name == "receiver.app"]
    assert len(warnings) == 1 and "32" in warnings[0]
    assert TOKEN not in warnings[0]


def test_a_token_of_the_accounts_file_that_cannot_be_twilios_is_warned_about(settings, caplog):
    short, good = "AC" + "1" * 32, "AC" + "2" * 32
    accounts = (Account(short, ("a" * 32, "placeholder")), Account(good, ("b" * 32,)))
    with caplog.at_level(logging.WARNING, logger="receiver.app"):
        create_app(replace(settings, auth_tokens=(), accounts=accounts))
    warnings = [r.getMessage() for r in caplog.records if r.name == "receiver.app"]
    assert len(warnings) == 1
    assert short in warnings[0] and "2 of 2" in warnings[0] and good not in warnings[0]
    assert "placeholder" not in warnings[0]


def test_an_empty_token_file_is_refused(tmp_path: Path):
    empty = tmp_path / "auth-token"
    empty.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        load_settings({"TWILIO_AUTH_TOKEN_FILE": str(empty)})


def test_the_kubernetes_secret_ships_no_usable_token(tmp_path: Path):
    import yaml

    root = Path(__file__).resolve().parents[1]
    secret = yaml.safe_load((root / "deploy" / "kubernetes" / "secret.yaml").read_text())
    (token,) = secret["stringData"].values()
    mounted = tmp_path / "auth-token"
    mounted.write_text(token)
    with pytest.raises(ConfigError):
        load_settings({"TWILIO_AUTH_TOKEN_FILE": str(mounted)})


def test_settings_repr_hides_the_embedded_password(redis_server: EmbeddedRedis):
    settings = Settings(auth_tokens=(TOKEN,), redis_url=redis_server.url)
    assert redis_server.password not in repr(settings)
