"""Real processes for end-to-end tests: the receiver under gunicorn with deploy/gunicorn.conf.py."""

from __future__ import annotations

from pathlib import Path

from receiver.server.process import Served, gunicorn_command, start

ROOT = Path(__file__).resolve().parents[2]
GUNICORN_CONFIG = ROOT / "deploy" / "gunicorn.conf.py"


def start_receiver_process(env: dict[str, str], workdir: Path) -> Served:
    """The real app with the deployment's configuration file, on a free loopback port."""
    return start(env, workdir, command=gunicorn_command(config=str(GUNICORN_CONFIG)), cwd=ROOT)
