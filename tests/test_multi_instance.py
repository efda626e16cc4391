"""Two receivers on two ports behind one Redis: one call's callbacks alternate between them."""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from .support.streams import call_entries
from .support.twilio_calls import CALLBACK_PATH, content, sid, sign, whole_call

pytestmark = pytest.mark.slow  # starts servers or processes


def send(base: str, params: dict) -> requests.Response:
    """A signed POST, patient: the machines that run the tests may be busy (no speed is
    asserted anywhere)."""
    return requests.post(
        base + CALLBACK_PATH,
        data=params,
        headers={"X-Twilio-Signature": sign(base + CALLBACK_PATH, params)},
        timeout=60,
    )


def test_one_call_across_two_receivers(start_receiver, redis_client, call_sid):
    first, second = start_receiver(), start_receiver(WEB_CONCURRENCY="1")
    assert first.port != second.port
    gt = sid("GT")
    events = whole_call(call_sid, gt)
    # A longer conversation than whole_call's, delivered out of order, every callback twice:
    # once to each receiver, at the same time.
    stop = events.pop()
    words = [f"utterance {n}" for n in range(len(events) + 1, len(events) + 21)]
    seq = len(events) + 1
    for text in words:
        events.append(content(call_sid, gt, seq, text, track="inbound_track"))
        seq += 1
    stop["SequenceId"] = str(seq)
    shuffled = events[1:]
    random.Random(6).shuffle(shuffled)
    ordered_delivery = [events[0], *shuffled, stop]

    def deliver(pair: tuple[int, dict]) -> list[str]:
        n, params = pair
        targets = (first, second) if n % 2 else (second, first)
        return [send(server.url, params).json()["outcome"] for server in targets]

    with ThreadPoolExecutor(4) as pool:
        outcomes = [o for pair in pool.map(deliver, enumerate(ordered_delivery)) for o in pair]
    assert outcomes.count("stored") == len(ordered_delivery)
    assert outcomes.count("duplicate") == len(ordered_delivery)

    entries = call_entries(redis_client, call_sid)
    sequence_ids = sorted(int(e["sequence_id"]) for e in entries)
    assert sequence_ids == list(range(1, seq + 1))  # complete, and no duplicates
    assert redis_client.xlen("rtt:events") == seq
    finals = [json.loads(m) for m in redis_client.zrange(f"rtt:call:{{{call_sid}}}:finals", 0, -1)]
    assert [f["transcript"] for f in finals] == ["hello I need help", "sure what is wrong", *words]
    assert [f["sequence_id"] for f in finals] == sorted(f["sequence_id"] for f in finals)
    by_entry = dict(redis_client.xrange(f"rtt:call:{{{call_sid}}}"))
    assert all(by_entry[f["entry_id"]]["transcript"] == f["transcript"] for f in finals)
    assert redis_client.zscore("rtt:calls:active", call_sid) is None
