"""`receiver transcriptions start|stop|twiml` against the emulator, through the official client."""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from receiver.cli import main
from receiver.devtools.emulator import Emulator, EmulatorServer
from receiver.server.network import free_port

from .support.twilio_calls import sid


@pytest.fixture(autouse=True)
def quiet_emulator() -> Iterator[None]:
    """The in-process emulator's own log lines are not the command's output."""
    logger = logging.getLogger("receiver.devtools.emulator")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(Emulator(speed=50)) as server:
        yield server


def run(emulator: EmulatorServer, *args: str, **env: str | None):
    environment = {
        "TWILIO_ACCOUNT_SID": emulator.emulator.account_sid,
        "TWILIO_AUTH_TOKEN": emulator.emulator.auth_token,
        "TWILIO_API_BASE_URL": emulator.url,
        "PUBLIC_BASE_URL": "",
        **env,
    }
    return CliRunner().invoke(main, ["transcriptions", *args], env=environment)


def test_start_passes_every_parameter(emulator: EmulatorServer):
    call_sid = sid("CA")
    result = run(
        emulator,
        "start",
        call_sid,
        "--name",
        "support",
        "--track",
        "inbound_track",
        "--status-callback-method",
        "GET",
        "--inbound-track-label",
        "customer",
        "--outbound-track-label",
        "agent",
        "--partial-results",
        "--language-code",
        "es-ES",
        "--transcription-engine",
        "deepgram",
        "--speech-model",
        "nova-3",
        "--hints",
        "Lisboa",
        "--no-profanity-filter",
        "--no-enable-automatic-punctuation",
        "--enable-provider-data",
        "--intelligence-service",
        "GA" + "1" * 32,
        PUBLIC_BASE_URL="http://127.0.0.1:8000",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Started transcription GT")
    (transcription,) = emulator.emulator.transcriptions.values()
    settings = transcription.settings
    assert transcription.call_sid == call_sid
    assert (settings.name, settings.track, settings.status_callback_method) == (
        "support",
        "inbound_track",
        "GET",
    )
    assert settings.status_callback_url == (
        "http://127.0.0.1:8000/transcriptions/callback?inbound_label=customer&outbound_label=agent"
    )
    assert (settings.inbound_track_label, settings.outbound_track_label) == ("customer", "agent")
    assert settings.partial_results is True
    assert (settings.language_code, settings.transcription_engine) == ("es-ES", "deepgram")
    assert (settings.speech_model, settings.hints) == ("nova-3", "Lisboa")
    assert settings.profanity_filter is False
    assert settings.enable_automatic_punctuation is False
    assert settings.enable_provider_data is True
    assert settings.intelligence_service == "GA" + "1" * 32


def test_start_json_then_stop_by_name_and_by_sid(emulator: EmulatorServer):
    call_sid = sid("CA")
    result = run(emulator, "start", call_sid, "--name", "a", "--json")
    assert result.exit_code == 0, result.output
    resource = json.loads(result.stdout)
    assert (resource["status"], resource["name"]) == ("in-progress", "a")
    stopped = run(emulator, "stop", call_sid, "a")
    assert stopped.exit_code == 0, stopped.output
    assert stopped.stdout.strip() == (
        f"Stopped transcription {resource['sid']} on call {call_sid} (stopped)"
    )
    other = json.loads(run(emulator, "start", call_sid, "--json").stdout)
    by_sid = run(emulator, "stop", call_sid, other["sid"], "--json")
    assert json.loads(by_sid.stdout)["status"] == "stopped"


def test_api_base_url_option_overrides_the_environment(emulator: EmulatorServer):
    result = run(
        emulator,
        "start",
        sid("CA"),
        "--api-base-url",
        emulator.url,
        TWILIO_API_BASE_URL="http://127.0.0.1:9",
    )
    assert result.exit_code == 0, result.output


def test_twilio_errors_become_one_line(emulator: EmulatorServer):
    call_sid = sid("CA")
    run(emulator, "start", call_sid, "--name", "once")
    assert run(emulator, "stop", call_sid, "once").exit_code == 0
    again = run(emulator, "stop", call_sid, "once")
    assert again.exit_code == 1
    lines = again.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: Twilio refused it (HTTP 400, error 21220): Invalid call")
    assert lines[0].endswith("See https://www.twilio.com/docs/errors/21220")
    unknown = run(emulator, "stop", call_sid, "never-started")
    assert "(HTTP 404, error 20404)" in unknown.output and unknown.exit_code == 1
    bad_token = run(emulator, "start", call_sid, TWILIO_AUTH_TOKEN="wrong")
    assert bad_token.exit_code == 1
    assert "(HTTP 401, error 20003): Authenticate." in bad_token.output
    bad_url = run(emulator, "start", call_sid, "--status-callback-url", "not a url")
    assert "(HTTP 400, error 21609)" in bad_url.output


def test_usage_errors(emulator: EmulatorServer):
    assert "is not a CallSid" in run(emulator, "start", "CA1").output
    no_url = run(emulator, "start", sid("CA"), TWILIO_API_BASE_URL="")
    assert no_url.exit_code == 2 and "PUBLIC_BASE_URL" in no_url.output
    no_account = run(emulator, "start", sid("CA"), TWILIO_ACCOUNT_SID="", TWILIO_API_BASE_URL="")
    assert no_account.exit_code == 2 and "TWILIO_ACCOUNT_SID" in no_account.output
    emulator_account = run(emulator, "start", sid("CA"), TWILIO_ACCOUNT_SID="")
    assert emulator_account.exit_code == 0, emulator_account.output
    nowhere = run(
        emulator, "start", sid("CA"), TWILIO_API_BASE_URL=f"http://127.0.0.1:{free_port()}"
    )
    assert nowhere.exit_code == 1 and "cannot reach the Twilio API" in nowhere.output


API_KEY, API_SECRET = "SK" + "5" * 32, "api-secret"


@pytest.fixture
def keyed() -> Iterator[EmulatorServer]:
    with EmulatorServer(Emulator(speed=50, api_keys={API_KEY: API_SECRET})) as server:
        yield server


def test_an_api_key_with_the_account_sid(keyed: EmulatorServer):
    call_sid = sid("CA")
    env = {"TWILIO_AUTH_TOKEN": None, "TWILIO_API_KEY": API_KEY, "TWILIO_API_SECRET": API_SECRET}
    started = run(keyed, "start", call_sid, "--name", "keyed", "--json", **env)
    assert started.exit_code == 0, started.output
    assert json.loads(started.stdout)["account_sid"] == keyed.emulator.account_sid
    stopped = run(keyed, "stop", call_sid, "keyed", **env)
    assert stopped.exit_code == 0, stopped.output
    # The key wins over an auth token set for the receiver: a wrong secret is refused.
    wrong = run(keyed, "start", call_sid, **{**env, "TWILIO_API_SECRET": "nope"})
    assert wrong.exit_code == 1 and "(HTTP 401, error 20003)" in wrong.output
    options = run(
        keyed,
        "start",
        sid("CA"),
        "--api-key",
        API_KEY,
        "--api-secret",
        API_SECRET,
        TWILIO_AUTH_TOKEN="not-the-token",
    )
    assert options.exit_code == 0, options.output


def test_api_key_usage_errors(keyed: EmulatorServer):
    no_secret = run(keyed, "start", sid("CA"), TWILIO_API_KEY=API_KEY)
    assert no_secret.exit_code == 2 and "TWILIO_API_SECRET is not set" in no_secret.output
    not_a_key = run(keyed, "start", sid("CA"), TWILIO_API_KEY="AC123", TWILIO_API_SECRET="x")
    assert not_a_key.exit_code == 2 and "SK followed by 32 hex" in not_a_key.output
    no_account = run(
        keyed,
        "start",
        sid("CA"),
        TWILIO_API_KEY=API_KEY,
        TWILIO_API_SECRET=API_SECRET,
        TWILIO_ACCOUNT_SID="",
        TWILIO_API_BASE_URL="",
        PUBLIC_BASE_URL="https://rtt.example.com",
    )
    assert no_account.exit_code == 2 and "an API key needs the SID of its account" in (
        no_account.output
    )


def test_twiml_start_and_stop():
    result = CliRunner().invoke(
        main,
        [
            "transcriptions",
            "twiml",
            "--track",
            "both_tracks",
            "--partial-results",
            "--inbound-track-label",
            "customer",
            "--outbound-track-label",
            "agent",
            "--name",
            "support",
            "--transcription-engine",
            "google",
        ],
        env={"PUBLIC_BASE_URL": "https://rtt.example.com/"},
    )
    assert result.exit_code == 0, result.output
    element = ET.fromstring(result.stdout.split("?>", 1)[1]).find("./Start/Transcription")
    assert element is not None
    assert element.attrib == {
        "statusCallbackUrl": "https://rtt.example.com/transcriptions/callback"
        "?inbound_label=customer&outbound_label=agent",
        "track": "both_tracks",
        "partialResults": "true",
        "inboundTrackLabel": "customer",
        "outboundTrackLabel": "agent",
        "name": "support",
        "transcriptionEngine": "google",
    }
    stop = CliRunner().invoke(main, ["transcriptions", "twiml", "--stop", "support"])
    assert '<Response><Stop><Transcription name="support" /></Stop></Response>' in stop.output


def test_the_emulators_credentials_are_the_default_with_an_api_base_url(
    emulator: EmulatorServer,
):
    anonymous = run(emulator, "start", sid("CA"), TWILIO_ACCOUNT_SID=None, TWILIO_AUTH_TOKEN=None)
    assert anonymous.exit_code == 0, anonymous.output
    no_token = run(
        emulator,
        "start",
        sid("CA"),
        TWILIO_AUTH_TOKEN=None,
        TWILIO_API_BASE_URL=None,
        PUBLIC_BASE_URL="https://rtt.example.com",
    )
    assert no_token.exit_code == 2 and "TWILIO_AUTH_TOKEN is not set" in no_token.output
