"""Secrets: the token from a file (Docker/Kubernetes secrets), Redis ACL users with a password,
and what rediss:// needs."""

from __future__ import annotations

from urllib.parse import quote

import pytest
import requests

from receiver.server.embedded_redis import EmbeddedRedis

from .support.certificates import issue
from .support.tls_proxy import TLSProxy
from .support.twilio_calls import content, sid
from .test_end_to_end import send

pytestmark = pytest.mark.slow  # starts servers or processes

ACL_USER = "rtt-receiver"
ACL_PASSWORD = "Acl-pässword-9f8e7d"
# Least privilege for the receiver: its own keys, reads, writes, scripts, PING; nothing else.
ACL_RULES = ["on", f">{ACL_PASSWORD}", "resetkeys", "~rtt:*", "~{rtt:*", "-@all", "+@read",
             "+@write", "+@scripting", "+ping"]  # fmt: skip


def add_acl_user(server: EmbeddedRedis) -> None:
    """``ACL SETUSER`` on the test server: the user the receiver logs in as."""
    server.client().execute_command("ACL", "SETUSER", ACL_USER, *ACL_RULES)


def acl_redis(data_dir) -> EmbeddedRedis:
    server = EmbeddedRedis(data_dir).start()
    add_acl_user(server)
    return server


def acl_url(server: EmbeddedRedis, password: str = ACL_PASSWORD) -> str:
    return f"redis://{ACL_USER}:{password}@127.0.0.1:{server.port}/0"


def test_token_from_a_file_end_to_end(start_receiver, redis_client, tmp_path, call_sid):
    secret = tmp_path / "twilio_auth_token"
    secret.write_text("12345\n")  # as Kubernetes mounts it: with a trailing newline
    server = start_receiver(TWILIO_AUTH_TOKEN="", TWILIO_AUTH_TOKEN_FILE=str(secret))
    assert send(server.url, content(call_sid, sid("GT"), 1, "from a file")).status_code == 200
    assert redis_client.xlen(f"rtt:call:{{{call_sid}}}") == 1


def test_an_acl_user_with_a_password(start_receiver, tmp_path, call_sid):
    server = acl_redis(tmp_path / "acl-redis")
    try:
        receiver = start_receiver(REDIS_URL=acl_url(server))
        assert requests.get(receiver.url + "/readyz", timeout=5).json()["redis"] == "ok"
        assert send(receiver.url, content(call_sid, sid("GT"), 1, "hi")).json() == {
            "outcome": "stored"
        }
        admin = server.client(decode_responses=True)
        assert admin.xlen(f"rtt:call:{{{call_sid}}}") == 1
        assert admin.acl_getuser(ACL_USER)["enabled"]
    finally:
        server.stop()


def test_a_wrong_acl_password_is_not_ready_and_never_stores(start_receiver, tmp_path, call_sid):
    server = acl_redis(tmp_path / "acl-redis")
    try:
        receiver = start_receiver(REDIS_URL=acl_url(server, "wrong"), SPOOL_DIR="off")
        ready = requests.get(receiver.url + "/readyz", timeout=5)
        assert ready.status_code == 503
        assert ready.json()["redis"] == "AuthenticationError"
        answer = send(receiver.url, content(call_sid, sid("GT"), 1, "hi"))
        assert answer.status_code == 503  # Twilio retries; fix the password meanwhile
        assert "wrong" not in ready.text + answer.text + receiver.log.read_text()
    finally:
        server.stop()


def test_rediss_with_a_verified_certificate_and_an_acl_user(start_receiver, tmp_path, call_sid):
    certificates = issue(tmp_path, "127.0.0.1")
    server = acl_redis(tmp_path / "acl-redis")
    proxy = TLSProxy(server.port, certificates.chain, certificates.key).start()
    try:
        url = (
            f"rediss://{ACL_USER}:{quote(ACL_PASSWORD)}@127.0.0.1:{proxy.port}/0"
            f"?ssl_ca_certs={quote(str(certificates.ca))}"
        )
        receiver = start_receiver(REDIS_URL=url)
        assert requests.get(receiver.url + "/readyz", timeout=5).json()["redis"] == "ok"
        assert send(receiver.url, content(call_sid, sid("GT"), 1, "over tls")).json() == {
            "outcome": "stored"
        }
        admin = server.client(decode_responses=True)
        assert admin.xlen(f"rtt:call:{{{call_sid}}}") == 1
        # The same server without its CA: the certificate is verified, so nothing is stored.
        untrusted = start_receiver(
            REDIS_URL=f"rediss://{ACL_USER}:{quote(ACL_PASSWORD)}@127.0.0.1:{proxy.port}/0",
            SPOOL_DIR="off",
        )
        answer = send(untrusted.url, content(call_sid, sid("GT"), 2, "over tls"))
        assert answer.status_code == 503
        assert admin.xlen(f"rtt:call:{{{call_sid}}}") == 1
    finally:
        proxy.stop()
        server.stop()
