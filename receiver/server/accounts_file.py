"""The workers' copy of ``TWILIO_ACCOUNTS_FILE``: private, and always a copy that was checked.

The gunicorn master keeps the file as given (it may be edited at any moment) apart from a copy
of its last valid content, which is what the workers read: a worker that boots while the file
is being edited, or after an edit broke it, never reads the edit. On start-up and on SIGHUP
(gunicorn's ``on_reload``) the file is copied first and the copy is what gets checked, so an
edit landing in the middle is either in the checked copy or not copied at all. The copy holds
auth tokens: it is created 0600 and replaced atomically, never widened by a umask.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

GIVEN = "RTT_GIVEN_ACCOUNTS_FILE"  # the path the operator gave, kept across reloads
COPY = "RTT_GOOD_ACCOUNTS_FILE"  # the workers' copy
_PRIVATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


def kept() -> bool:
    """Whether this master keeps a copy of an accounts file."""
    return bool(os.environ.get(GIVEN))


def keep() -> str:
    """Copy the accounts file as given, check the copy (``ConfigError``, ``OSError``: the
    workers' copy is left as it was) and make it what the workers read; the given path."""
    from receiver.config import load_settings

    given = os.environ.setdefault(GIVEN, os.environ["TWILIO_ACCOUNTS_FILE"])
    copy = os.environ.get(COPY)
    if not copy:
        fd, copy = tempfile.mkstemp(prefix="rtt-accounts-", suffix=os.path.splitext(given)[1])
        os.close(fd)
        os.environ[COPY] = copy
    root, suffix = os.path.splitext(copy)
    staged = f"{root}.new{suffix}"  # the same suffix: it says YAML or JSON
    try:
        with open(given, "rb") as source, open(os.open(staged, _PRIVATE, 0o600), "wb") as out:
            shutil.copyfileobj(source, out)
        load_settings({**os.environ, "TWILIO_ACCOUNTS_FILE": staged})
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(staged)
        raise
    os.replace(staged, copy)  # a worker booting now reads the old copy or the new one
    os.environ["TWILIO_ACCOUNTS_FILE"] = copy
    return given


def remove() -> None:
    """At exit: the copy holds tokens."""
    copy = os.environ.get(COPY)
    if copy:
        with contextlib.suppress(OSError):
            os.unlink(copy)
