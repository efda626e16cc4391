"""Many accounts on the served receiver: the official client starts transcriptions on the
emulator as two accounts, and TWILIO_ACCOUNTS_FILE is re-read on SIGHUP while callbacks flow."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import requests
from twilio.rest import Client

from receiver.devtools.emulator import Emulator, EmulatorServer
from receiver.views.callback import CALLBACK_PATH

from .support.twilio_calls import content, sid, sign

pytestmark = pytest.mark.slow  # starts servers or processes

ACCOUNT_A = "AC" + "a" * 32
ACCOUNT_B = "AC" + "b" * 32
TOKEN_A, TOKEN_B = "served-token-a", "served-token-b"
A_ONLY = {ACCOUNT_A: {"auth_tokens": [TOKEN_A], "stream_prefix": "tenant-a"}}
BOTH = {**A_ONLY, ACCOUNT_B: {"auth_tokens": [TOKEN_B], "stream_prefix": "tenant-b"}}
DEADLINE = 60.0  # generous: reloads on a shared machine can be slow


def start_multi(start_receiver, path: Path, accounts: dict):
    path.write_text(json.dumps(accounts))
    # The fixture's single-account token is removed: both kinds at once are refused.
    return start_receiver(TWILIO_ACCOUNTS_FILE=str(path), TWILIO_AUTH_TOKEN=None)


def run_call(account: str, token: str, callback_url: str) -> tuple[str, list]:
    """One call through the REST resource as ``account``; its CallSid and the deliveries."""
    emulator = Emulator(account, token, speed=40)
    with EmulatorServer(emulator) as server:
        client = Client(account, token)
        client.api.base_url = server.url
        call_sid = sid("CA")
        created = client.calls(call_sid).transcriptions.create(
            status_callback_url=callback_url, partial_results=True
        )
        assert emulator.wait(30)
        return call_sid, emulator.transcriptions[created.sid].playback.deliveries


def test_two_accounts_from_one_file_each_under_its_prefix(start_receiver, redis_client, tmp_path):
    receiver = start_multi(start_receiver, tmp_path / "accounts.json", BOTH)
    url = receiver.url + CALLBACK_PATH
    call_a, sent_a = run_call(ACCOUNT_A, TOKEN_A, url)
    call_b, sent_b = run_call(ACCOUNT_B, TOKEN_B, url)
    assert sent_a and {d.status for d in sent_a} == {200}
    assert sent_b and {d.status for d in sent_b} == {200}
    a = [f for _, f in redis_client.xrange("tenant-a:events")]
    b = [f for _, f in redis_client.xrange("tenant-b:events")]
    assert {(f["account_sid"], f["call_sid"]) for f in a} == {(ACCOUNT_A, call_a)}
    assert {(f["account_sid"], f["call_sid"]) for f in b} == {(ACCOUNT_B, call_b)}
    assert len(a) == len(sent_a) and len(b) == len(sent_b)
    assert not redis_client.exists("rtt:events")
    # Account B's emulator signing with A's token: every callback refused, nothing stored.
    forged_call, forged = run_call(ACCOUNT_B, TOKEN_A, url)
    assert forged and {d.status for d in forged} == {403}
    assert not redis_client.keys(f"*{forged_call}*")


def post_as(base: str, account: str, token: str, seq: int, call_sid: str) -> int:
    params = {
        **content(call_sid, "GT" + call_sid[2:], seq, f"utterance {seq}"),
        "AccountSid": account,
    }
    url = base + CALLBACK_PATH
    headers = {"X-Twilio-Signature": sign(url, params, token)}
    return requests.post(url, data=params, headers=headers, timeout=30).status_code


class Steady:
    """Account A's callbacks, one after another, on new connections, until stopped."""

    def __init__(self, base: str) -> None:
        self.base, self.call_sid = base, sid("CA")
        self.answers: list[int | str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        seq = 0
        while not self._stop.is_set():
            seq += 1
            try:
                self.answers.append(post_as(self.base, ACCOUNT_A, TOKEN_A, seq, self.call_sid))
            except requests.RequestException as error:
                self.answers.append(type(error).__name__)

    def __enter__(self) -> Steady:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(DEADLINE)


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_sighup_rereads_the_file_without_dropping_callbacks(start_receiver, redis_client, tmp_path):
    path = tmp_path / "accounts.json"
    receiver = start_multi(start_receiver, path, A_ONLY)
    call_b = sid("CA")
    assert post_as(receiver.url, ACCOUNT_B, TOKEN_B, 1, call_b) == 403
    old_workers = set(receiver.worker_pids())
    with Steady(receiver.url) as steady:
        wait_until(lambda: len(steady.answers) >= 5, "callbacks before the reload")
        path.write_text(json.dumps(BOTH))
        os.kill(receiver.process.pid, signal.SIGHUP)
        wait_until(
            lambda: post_as(receiver.url, ACCOUNT_B, TOKEN_B, 1, call_b) == 200,
            "account B to be accepted",
        )
        wait_until(lambda: not old_workers & set(receiver.worker_pids()), "old workers to end")
        during = len(steady.answers)
        wait_until(lambda: len(steady.answers) >= during + 5, "callbacks after the reload")
    assert set(steady.answers) == {200}, steady.answers
    assert redis_client.xlen("tenant-a:events") == len(steady.answers)
    assert [f["call_sid"] for _, f in redis_client.xrange("tenant-b:events")] == [call_b]


def test_a_broken_edit_keeps_the_accounts_read_before(start_receiver, redis_client, tmp_path):
    path = tmp_path / "accounts.json"
    receiver = start_multi(start_receiver, path, A_ONLY)
    old_workers = set(receiver.worker_pids())
    path.write_text(json.dumps({ACCOUNT_A: {"auth_tokens": []}}))
    os.kill(receiver.process.pid, signal.SIGHUP)
    wait_until(lambda: not old_workers & set(receiver.worker_pids()), "old workers to end")
    wait_until(lambda: receiver.answers("/healthz"), "the new workers")
    assert receiver.process.poll() is None
    assert post_as(receiver.url, ACCOUNT_A, TOKEN_A, 1, sid("CA")) == 200
    assert "keeping the accounts read before" in receiver.log_tail(20_000)
    # Fixed and signalled again: the file is read again.
    path.write_text(json.dumps(BOTH))
    os.kill(receiver.process.pid, signal.SIGHUP)
    wait_until(
        lambda: post_as(receiver.url, ACCOUNT_B, TOKEN_B, 1, sid("CA")) == 200,
        "account B to be accepted",
    )
