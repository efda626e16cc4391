"""The dashboard in a real headless browser (Debian's chromium, driven by Playwright) against
the real receiver, Redis, dashboard and emulator, each in its own process on 127.0.0.1.

Set DASHBOARD_SCREENSHOTS=<dir> to keep the screenshots (docs/dashboard.png comes from there).
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from receiver.devtools.emulator import DEFAULT_ACCOUNT_SID, Emulator, EmulatorServer
from receiver.protocol import provider_data, timestamp

from .support.dashboard_stack import PASSWORD, Stack
from .support.twilio_calls import TOKEN, callback, content, sid, started

pytestmark = pytest.mark.slow  # starts servers, processes and a browser

CHROMIUM = "/usr/bin/chromium"
# How long a live update may take before a test fails: a margin for a loaded machine, not a goal.
LIVE_DEADLINE_MS = 15_000
if not Path(CHROMIUM).exists():
    pytest.skip(
        f"{CHROMIUM} is missing: `make test` installs Debian's chromium when run as root "
        "(apt-get install chromium)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is missing: pip install -e '.[test]'"
)
expect = sync_api.expect


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_api.sync_playwright() as playwright:
        # As root (CI) chromium's sandbox cannot start; the pages are the test's own.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def stack(start_receiver, redis_server, tmp_path) -> Iterator[Stack]:
    receiver = start_receiver(WEB_CONCURRENCY="1")
    stack = Stack(receiver, redis_server.url, tmp_path, {"DASHBOARD_PASSWORD": PASSWORD})
    stack.start_dashboard()
    yield stack
    stack.stop()


@pytest.fixture
def context(browser, stack):
    context = browser.new_context(
        http_credentials={"username": "rtt", "password": PASSWORD},
        viewport={"width": 1100, "height": 760},
    )
    yield context
    context.close()


def keep(page, directory: Path, name: str) -> Path:
    """A screenshot in the test's directory, and in DASHBOARD_SCREENSHOTS when set."""
    path = directory / name
    page.screenshot(path=str(path), full_page=True)
    wanted = os.environ.get("DASHBOARD_SCREENSHOTS")
    if wanted:
        Path(wanted).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(wanted) / name)
    return path


def test_no_credentials_gets_401(stack, browser):
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(stack.dashboard.url + "/", timeout=5)
    assert refused.value.code == 401
    for credentials in (None, {"username": "rtt", "password": "wrong"}):
        context = browser.new_context(http_credentials=credentials)
        try:
            for path in ("/", "/events", "/static/dashboard.js"):
                assert context.request.get(stack.dashboard.url + path).status == 401
            page = context.new_page()
            try:
                assert page.goto(stack.dashboard.url + "/").status == 401
            except sync_api.Error as error:
                # Without credentials headless chromium, which cannot ask, gives up at once.
                assert "ERR_INVALID_AUTH_CREDENTIALS" in str(error)
        finally:
            context.close()


def test_a_live_call_from_start_to_end(stack, context):
    index = context.new_page()
    index.goto(stack.dashboard.url + "/")
    expect(index.locator("#live-status")).to_have_text("live")
    call_sid, gt = sid("CA"), sid("GT")
    assert stack.send(started(call_sid, gt)) == 200
    row = index.locator(f'#active tr[data-call="{call_sid}"]')
    # Live, without a reload. The 2 s goal is a speed, measured by `receiver dashboard-bench`
    # (callback's 200 to the viewer); a test only waits with a margin for a loaded machine.
    expect(row).to_be_visible(timeout=LIVE_DEADLINE_MS)
    expect(row.locator("td.labels")).to_have_text("customer / agent")

    conversation = context.new_page()
    conversation.goto(f"{stack.dashboard.url}/calls/{call_sid}")
    expect(conversation.locator("#live-status")).to_have_text("live")
    stack.send(content(call_sid, gt, 2, "Hi, I'd like", final=False))
    partial = conversation.locator("li.msg.partial")
    expect(partial.locator(".text")).to_have_text("Hi, I'd like", timeout=5000)
    expect(partial.locator(".who")).to_have_text("customer")
    stack.send(content(call_sid, gt, 3, "Hi, I'd like to change", final=False))
    expect(partial.locator(".text")).to_have_text("Hi, I'd like to change")
    stack.send(content(call_sid, gt, 4, "Hi, I'd like to change my flight."))
    expect(conversation.locator("li.msg.partial")).to_have_count(0)
    expect(conversation.locator("li.msg.final.in .text")).to_have_text(
        ["Hi, I'd like to change my flight."]
    )
    stack.send(
        content(
            call_sid,
            gt,
            5,
            "Of course, the booking reference?",
            track="outbound_track",
            confidence=0.31,
        )
    )
    expect(conversation.locator("li.msg.final.out .who")).to_have_text(["agent"])
    expect(conversation.locator("li.msg.final.in .who")).to_have_text(["customer"])
    expect(conversation.locator("li.msg.final.out.low .low-mark")).to_have_text(
        "low confidence 0.31"
    )
    stack.send(
        callback(
            "error",
            call_sid,
            gt,
            6,
            TranscriptionErrorCode="32655",
            TranscriptionError="Provider Unavailable",
        )
    )
    expect(conversation.locator("li.notice.error")).to_contain_text("32655")
    expect(row.locator("td.count")).to_have_text("2")
    expect(row.locator("td.errors")).to_have_text("1")
    keep(conversation, stack.workdir, "dashboard-call.png")

    stack.send(callback("stopped", call_sid, gt, 7))
    expect(index.locator(f'#ended tr[data-call="{call_sid}"]')).to_be_visible()
    expect(index.locator(f'#active tr[data-call="{call_sid}"]')).to_have_count(0)
    expect(conversation.locator("#call-state")).to_have_text("ended")
    index.reload()
    expect(index.locator(f'#ended tr[data-call="{call_sid}"]')).to_be_visible()


def test_late_events_of_an_ended_call_do_not_bring_it_back(stack, context):
    """Twilio does not guarantee order: a final and an error delivered after the stopped event
    leave the call among the ended ones; only a new transcription-started brings it back."""
    index = context.new_page()
    index.goto(stack.dashboard.url + "/")
    expect(index.locator("#live-status")).to_have_text("live")
    call_sid, gt = sid("CA"), sid("GT")
    stack.send(started(call_sid, gt))
    stack.send(callback("stopped", call_sid, gt, 4))
    ended = index.locator(f'#ended tr[data-call="{call_sid}"]')
    expect(ended).to_be_visible(timeout=LIVE_DEADLINE_MS)
    stack.send(content(call_sid, gt, 2, "said before the stop"))
    stack.send(
        callback("error", call_sid, gt, 3, TranscriptionErrorCode="32655", TranscriptionError="x")
    )
    expect(ended.locator("td.errors")).to_have_text("1")  # both arrived
    expect(ended.locator("td.count")).to_have_text("1")
    expect(index.locator(f'#active tr[data-call="{call_sid}"]')).to_have_count(0)
    again = sid("GT")
    stack.send(started(call_sid, again))
    expect(index.locator(f'#active tr[data-call="{call_sid}"]')).to_be_visible()
    stack.send(callback("stopped", call_sid, again, 2))
    expect(ended).to_be_visible()


def test_a_restart_of_the_dashboard_resumes_without_duplicates(stack, context):
    call_sid, gt = sid("CA"), sid("GT")
    stack.send(started(call_sid, gt))
    page = context.new_page()
    page.goto(f"{stack.dashboard.url}/calls/{call_sid}")
    expect(page.locator("#live-status")).to_have_text("live")
    page.evaluate("window.sameDocument = true")
    for n in range(2, 5):
        stack.send(content(call_sid, gt, n, f"utterance {n}"))
    expect(page.locator("li.msg.final")).to_have_count(3)
    port = stack.dashboard.port
    stack.dashboard.stop()
    for n in range(5, 8):  # stored while no dashboard runs
        stack.send(content(call_sid, gt, n, f"utterance {n}"))
    stack.start_dashboard(port)
    for n in range(8, 10):
        stack.send(content(call_sid, gt, n, f"utterance {n}"))
    texts = page.locator("li.msg.final .text")
    expect(texts).to_have_text([f"utterance {n}" for n in range(2, 10)], timeout=15000)
    assert page.evaluate("window.sameDocument") is True  # resumed, not reloaded


def test_the_live_page_orders_finals_as_the_page_served_and_the_downloads(stack, context):
    """Live updates place each final where the served page and transcript.txt have it: two
    single-track transcriptions interleave as stored; provider timing orders as spoken."""
    turns, spoken = sid("CA"), sid("CA")
    customer, agent, gt = sid("GT"), sid("GT"), sid("GT")
    stack.send(callback("started", turns, customer, 1, Track="inbound_track"))
    stack.send(callback("started", turns, agent, 1, Track="outbound_track"))
    stack.send(started(spoken, gt))
    pages = {}
    for call_sid in (turns, spoken):
        pages[call_sid] = context.new_page()
        pages[call_sid].goto(f"{stack.dashboard.url}/calls/{call_sid}")
        expect(pages[call_sid].locator("#live-status")).to_have_text("live")
    for transcription, seq, text in (
        (customer, 2, "customer one"),
        (agent, 2, "agent one"),
        (customer, 4, "customer three"),  # delivered before its predecessor
        (customer, 3, "customer two"),
        (agent, 3, "agent two"),
    ):
        track = "inbound_track" if transcription == customer else "outbound_track"
        assert stack.send(content(turns, transcription, seq, text, track=track)) == 200
    connected = timestamp(datetime.now(UTC) - timedelta(seconds=30))
    for seq, text, track, start in (
        (2, "customer, later", "inbound_track", 5.0),
        (3, "agent, earlier", "outbound_track", 2.0),
    ):
        timing = provider_data(connected, start, 1.0)
        stack.send(content(spoken, gt, seq, text, track=track, TranscriptionProviderData=timing))
    expected = {
        turns: ["customer one", "agent one", "customer two", "customer three", "agent two"],
        spoken: ["agent, earlier", "customer, later"],
    }
    for call_sid, page in pages.items():
        texts = page.locator("li.msg.final .text")
        expect(texts).to_have_text(expected[call_sid], timeout=LIVE_DEADLINE_MS)  # live
        page.reload()
        expect(texts).to_have_text(expected[call_sid])  # served
        download = context.request.get(f"{stack.dashboard.url}/calls/{call_sid}/transcript.txt")
        lines = download.text().splitlines()[1:]
        assert [line.split(": ", 1)[1] for line in lines] == expected[call_sid]


def test_hostile_transcripts_show_as_text_and_run_nothing(stack, context):
    call_sid, gt = sid("CA"), sid("GT")
    stack.send(started(call_sid, gt))
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(f"{stack.dashboard.url}/calls/{call_sid}")
    expect(page.locator("#live-status")).to_have_text("live")
    hostile = [
        "<script>window.pwned = 1; alert(1)</script>",
        '<img src=x onerror="window.pwned = 2; alert(2)">',
    ]
    stack.send(content(call_sid, gt, 2, hostile[0]))
    stack.send(content(call_sid, gt, 3, hostile[1], track="outbound_track"))
    texts = page.locator("li.msg.final .text")
    expect(texts).to_have_text(hostile)  # live
    page.reload()
    expect(texts).to_have_text(hostile)  # history
    expect(page.locator("#chat img")).to_have_count(0)
    index = context.new_page()
    index.goto(stack.dashboard.url + "/")
    expect(index.locator(f'tr[data-call="{call_sid}"] td.latest')).to_have_text(
        f"agent: {hostile[1]}"
    )
    for checked in (page, index):
        assert checked.evaluate("typeof window.pwned") == "undefined"
    assert dialogs == []


def test_a_call_from_the_emulator(stack, context):
    emulator = EmulatorServer(Emulator(DEFAULT_ACCOUNT_SID, TOKEN, speed=4.0)).start()
    try:
        from twilio.rest import Client

        index = context.new_page()
        index.goto(stack.dashboard.url + "/")
        expect(index.locator("#live-status")).to_have_text("live")
        twilio = Client(DEFAULT_ACCOUNT_SID, TOKEN)
        twilio.api.base_url = emulator.url
        call_sid = sid("CA")
        created = twilio.calls(call_sid).transcriptions.create(
            track="both_tracks",
            status_callback_url=f"{stack.receiver.url}/transcriptions/callback",
            partial_results=True,
            inbound_track_label="customer",
            outbound_track_label="agent",
        )
        row = index.locator(f'#active tr[data-call="{call_sid}"]')
        expect(row).to_be_visible(timeout=LIVE_DEADLINE_MS)
        page = context.new_page()
        page.goto(f"{stack.dashboard.url}/calls/{call_sid}")
        expect(page.locator("li.msg.final.in .who").first).to_have_text("customer")
        expect(page.locator("li.msg.final.out .who").first).to_have_text("agent")
        expect(page.locator("li.msg.final")).to_have_count(5, timeout=15000)
        keep(page, stack.workdir, "dashboard.png")
        keep(index, stack.workdir, "dashboard-index.png")
        playback = emulator.emulator.transcriptions[created.sid].playback
        assert playback.wait(30)
        expect(index.locator(f'#ended tr[data-call="{call_sid}"]')).to_be_visible()
        expect(page.locator("#call-state")).to_have_text("ended")
    finally:
        emulator.stop()
