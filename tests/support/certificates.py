"""Certificates for TLS tests, made at test time by a throwaway CA (trustme)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class Certificates:
    ca: Path  # what clients verify with
    chain: Path  # the server's certificate chain
    key: Path  # the server's private key


def issue(directory: Path, *hosts: str) -> Certificates:
    """A server certificate for ``hosts`` (default: localhost and 127.0.0.1) and its CA."""
    ca = trustme.CA()
    server = ca.issue_cert(*(hosts or ("localhost", "127.0.0.1")))
    paths = Certificates(directory / "ca.pem", directory / "chain.pem", directory / "key.pem")
    ca.cert_pem.write_to_path(str(paths.ca))
    server.private_key_pem.write_to_path(str(paths.key))
    for n, blob in enumerate(server.cert_chain_pems):
        blob.write_to_path(str(paths.chain), append=n > 0)
    return paths
