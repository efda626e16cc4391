"""The accounts file on SIGHUP (``accounts_file.keep``, what gunicorn's ``on_reload`` hook
calls): the workers' copy is private, and it is always a copy that was checked, even when an
edit lands mid-reload."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import receiver.config
from receiver.config import ConfigError
from receiver.server import accounts_file

from .test_accounts import ACCOUNT_A, ACCOUNT_B, ACCOUNTS

VALID = json.dumps(ACCOUNTS)
BROKEN = json.dumps({ACCOUNT_A: {"auth_tokens": []}})


@pytest.fixture
def given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "accounts.json"
    path.write_text(VALID)
    for name in (accounts_file.GIVEN, accounts_file.COPY, "TWILIO_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TWILIO_ACCOUNTS_FILE", str(path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    accounts_file.keep()
    yield path
    for name in (accounts_file.GIVEN, accounts_file.COPY):  # set by keep()
        os.environ.pop(name, None)


def workers_copy() -> Path:
    return Path(os.environ["TWILIO_ACCOUNTS_FILE"])


def test_the_workers_copy_stays_private_across_reloads(given: Path):
    given.chmod(0o644)
    for _ in range(2):
        accounts_file.keep()
        copy = workers_copy()
        assert copy != given and json.loads(copy.read_text()) == ACCOUNTS
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert sorted(p.name for p in given.parent.glob("rtt-accounts-*")) == [copy.name]


def test_a_broken_edit_leaves_the_workers_copy_as_it_was(given: Path):
    given.write_text(BROKEN)
    with pytest.raises(ConfigError, match="auth_tokens"):
        accounts_file.keep()
    assert json.loads(workers_copy().read_text()) == ACCOUNTS
    assert sorted(p.name for p in given.parent.glob("rtt-accounts-*")) == [workers_copy().name]


def test_an_edit_landing_mid_reload_never_installs_an_unchecked_file(
    given: Path, monkeypatch: pytest.MonkeyPatch
):
    """The edit lands right after the reload read the file as valid: what the workers get is
    what was checked, never the broken edit."""
    check = receiver.config.load_settings

    def check_then_edit(*args, **kwargs):
        settings = check(*args, **kwargs)
        given.write_text(BROKEN)
        return settings

    given.write_text(json.dumps({**ACCOUNTS, ACCOUNT_B: {"auth_tokens": ["other"]}}))
    monkeypatch.setattr(receiver.config, "load_settings", check_then_edit)
    accounts_file.keep()
    installed = json.loads(workers_copy().read_text())
    assert installed[ACCOUNT_B] == {"auth_tokens": ["other"]}
