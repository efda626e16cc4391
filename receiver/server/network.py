"""Local addresses: which hosts are this machine only, and a free port on loopback."""

from __future__ import annotations

import ipaddress
import socket


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name, ``[::1]`` style too) is this machine only.

    A name other than ``localhost`` may resolve to any interface, so it counts as reachable."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
