"""`receiver transcriptions start|stop|twiml`: drive real transcriptions with the official client.

``--api-base-url`` (or ``TWILIO_API_BASE_URL``) aims the same client at the emulator, so a
script that works against ``receiver emulate`` works against Twilio unchanged. Twilio's error
JSON becomes one human line and exit status 1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

import click
import requests
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.rest import Client
from twilio.twiml.voice_response import Start, Stop, VoiceResponse

from receiver.cli.options import api_key_options, json_option
from receiver.devtools.emulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN
from receiver.protocol import API_KEY_SID, SID_PATTERNS, TRACK_SETTINGS
from receiver.views.callback import CALLBACK_PATH

# (option, Twilio's parameter, the client's keyword, kind), every parameter of the resource.
TEXT_OPTIONS = [
    ("--name", "Name", "name", "Name of the transcription; stop it by this name."),
    ("--inbound-track-label", "InboundTrackLabel", "inbound_track_label", "e.g. customer"),
    ("--outbound-track-label", "OutboundTrackLabel", "outbound_track_label", "e.g. agent"),
    ("--language-code", "LanguageCode", "language_code", "BCP-47, e.g. en-US"),
    ("--transcription-engine", "TranscriptionEngine", "transcription_engine", "e.g. google"),
    ("--speech-model", "SpeechModel", "speech_model", "e.g. telephony"),
    ("--hints", "Hints", "hints", "Phrases that help recognition, comma-separated."),
    ("--intelligence-service", "IntelligenceService", "intelligence_service", "SID or name."),
]
BOOLEAN_OPTIONS = [
    ("partial-results", "partial_results", "Send partial results too."),
    ("profanity-filter", "profanity_filter", "Mask profanities."),
    ("enable-automatic-punctuation", "enable_automatic_punctuation", "Add punctuation."),
    ("enable-provider-data", "enable_provider_data", "Include raw provider data."),
]
NEWER_OPTIONS = [
    ("--conversation-configuration", "conversation_configuration", "Conversations config ID."),
    ("--conversation-id", "conversation_id", "Existing Conversation to attach to."),
    ("--transcription-configuration-id", "transcription_configuration_id", "Config ID."),
]


def resource_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Every parameter of the RealtimeTranscription resource, as options."""
    options = [
        click.option(
            "--track",
            type=click.Choice(TRACK_SETTINGS),
            help="Which audio to transcribe (Twilio's default: both_tracks).",
        ),
        click.option(
            "--status-callback-url",
            help="Where the events go; default: $PUBLIC_BASE_URL + /transcriptions/callback.",
        ),
        click.option("--status-callback-method", type=click.Choice(["POST", "GET"])),
    ]
    for flag, _param, keyword, text in TEXT_OPTIONS:
        options.append(click.option(flag, keyword, help=text))
    for flag, keyword, text in BOOLEAN_OPTIONS:
        options.append(click.option(f"--{flag}/--no-{flag}", keyword, default=None, help=text))
    for flag, keyword, text in NEWER_OPTIONS:
        options.append(click.option(flag, keyword, help=text))
    for option in reversed(options):
        command = option(command)
    return command


def callback_url(given: str | None, labels: dict[str, str | None], emulated: bool) -> str:
    """The StatusCallbackUrl: as given, or this receiver's public callback URL, with the track
    labels on its query string so content that arrives before ``started`` is labelled too."""
    if given:
        url = given
    else:
        public = os.environ.get("PUBLIC_BASE_URL", "").strip().rstrip("/")
        if not public and not emulated:
            raise click.UsageError(
                "set PUBLIC_BASE_URL (the receiver's public URL) or give --status-callback-url"
            )
        url = (public or f"http://127.0.0.1:{os.environ.get('PORT', '8000')}") + CALLBACK_PATH
    query = {k: v for k, v in labels.items() if v}
    if query and not urlsplit(url).query and not given:
        url = f"{url}?{urlencode(query)}"
    return url


def _credentials(
    account_sid: str | None,
    auth_token: str | None,
    api_key: str | None,
    api_secret: str | None,
    emulated: bool,
) -> tuple[str, str, str]:
    """(username, password, account SID) for the client: an API key and its secret when one is
    given (Twilio's advice for production; it wins over an auth token set for the receiver),
    else the account's auth token."""
    if emulated:
        # Aimed at the emulator: its own test account and token are the natural defaults, the
        # ones `receiver emulate` uses when neither is set (so its printed hint just works).
        account_sid = account_sid or DEFAULT_ACCOUNT_SID
        if not api_key:
            auth_token = auth_token or DEFAULT_AUTH_TOKEN
    if not account_sid or not SID_PATTERNS["AccountSid"].match(account_sid):
        raise click.UsageError(
            f"TWILIO_ACCOUNT_SID ({account_sid!r}) must be AC followed by 32 hex digits"
            + (" (an API key needs the SID of its account)" if api_key else "")
        )
    if api_key or api_secret:
        if not api_key or not API_KEY_SID.match(api_key):
            raise click.UsageError(
                f"TWILIO_API_KEY ({api_key!r}) must be an API key SID: SK followed by 32 hex "
                "digits (set it with TWILIO_API_SECRET, or neither)"
            )
        if not api_secret:
            raise click.UsageError("TWILIO_API_SECRET is not set (or give --api-secret)")
        return api_key, api_secret, account_sid
    if not auth_token:
        raise click.UsageError(
            "TWILIO_AUTH_TOKEN is not set (or give --auth-token, or TWILIO_API_KEY and "
            "TWILIO_API_SECRET)"
        )
    return account_sid, auth_token.split(",")[0].strip(), account_sid


def client_from(
    account_sid: str | None,
    auth_token: str | None,
    api_base_url: str | None,
    api_key: str | None = None,
    api_secret: str | None = None,
) -> Client:
    username, password, account = _credentials(
        account_sid, auth_token, api_key, api_secret, bool(api_base_url)
    )
    client = Client(username, password, account)
    if api_base_url:
        client.api.base_url = api_base_url.rstrip("/")
        client.edge = client.region = None  # a region or edge would rewrite the host
    return client


def twilio_error(error: Exception, base_url: str) -> click.ClickException:
    """Twilio's error JSON (or a connection failure) as one line for humans."""
    if isinstance(error, TwilioRestException):
        message = str(error.msg).removeprefix("Unable to create record: ")
        message = message.removeprefix("Unable to update record: ")
        more = f" See https://www.twilio.com/docs/errors/{error.code}" if error.code else ""
        return click.ClickException(
            f"Twilio refused it (HTTP {error.status}, error {error.code}): {message}.{more}"
        )
    if isinstance(error, requests.ConnectionError):
        return click.ClickException(f"cannot reach the Twilio API at {base_url}")
    return click.ClickException(f"Twilio client error: {error}")


def account_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = api_key_options(
        "An API key SID (SK…), used instead of the auth token [env: TWILIO_API_KEY]."
    )(command)
    command = click.option(
        "--api-base-url",
        envvar="TWILIO_API_BASE_URL",
        help="Another API base URL, e.g. the emulator's http://127.0.0.1:8010 "
        "[env: TWILIO_API_BASE_URL].",
    )(command)
    command = click.option(
        "--auth-token", envvar="TWILIO_AUTH_TOKEN", help="[env: TWILIO_AUTH_TOKEN]"
    )(command)
    return click.option(
        "--account-sid", envvar="TWILIO_ACCOUNT_SID", help="[env: TWILIO_ACCOUNT_SID]"
    )(command)


def _call_sid(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not SID_PATTERNS["CallSid"].match(value):
        raise click.BadParameter(f"{value!r} is not a CallSid (CA followed by 32 hex digits)")
    return value


@click.group()
def transcriptions() -> None:
    """Start and stop Real-Time Transcriptions on live calls (Twilio or the emulator)."""


@transcriptions.command()
@click.argument("call_sid", callback=_call_sid)
@resource_options
@account_options
@json_option("Print the resource as JSON.")
def start(
    call_sid, account_sid, auth_token, api_key, api_secret, api_base_url, as_json, **params
) -> None:
    """Start a transcription on the in-progress call CALL_SID."""
    client = client_from(account_sid, auth_token, api_base_url, api_key, api_secret)
    labels = {
        "inbound_label": params["inbound_track_label"],
        "outbound_label": params["outbound_track_label"],
    }
    params["status_callback_url"] = callback_url(
        params["status_callback_url"], labels, emulated=bool(api_base_url)
    )
    given = {k: v for k, v in params.items() if v is not None}
    try:
        created = client.calls(call_sid).transcriptions.create(**given)
    except (TwilioException, requests.RequestException) as error:
        raise twilio_error(error, client.api.base_url) from None
    if as_json:
        click.echo(json.dumps(_resource(created)))
        return
    named = f" {created.name!r}" if created.name else ""
    click.echo(
        f"Started transcription {created.sid}{named} on call {call_sid} ({created.status}); "
        f"events go to {params['status_callback_url']}"
    )


@transcriptions.command()
@click.argument("call_sid", callback=_call_sid)
@click.argument("sid_or_name")
@account_options
@json_option("Print the resource as JSON.")
def stop(
    call_sid, sid_or_name, account_sid, auth_token, api_key, api_secret, api_base_url, as_json
) -> None:
    """Stop the transcription SID_OR_NAME (its GT… SID or its name) on call CALL_SID."""
    client = client_from(account_sid, auth_token, api_base_url, api_key, api_secret)
    try:
        stopped = client.calls(call_sid).transcriptions(sid_or_name).update(status="stopped")
    except (TwilioException, requests.RequestException) as error:
        raise twilio_error(error, client.api.base_url) from None
    if as_json:
        click.echo(json.dumps(_resource(stopped)))
        return
    click.echo(f"Stopped transcription {stopped.sid} on call {call_sid} ({stopped.status})")


def _resource(instance) -> dict[str, object]:
    return {
        "account_sid": instance.account_sid,
        "call_sid": instance.call_sid,
        "sid": instance.sid,
        "name": instance.name,
        "status": instance.status,
        "date_updated": instance.date_updated.isoformat() if instance.date_updated else None,
        "uri": instance.uri,
    }


@transcriptions.command()
@resource_options
@click.option("--stop", "stop_name", metavar="NAME", help="Instead: <Stop> the one named NAME.")
def twiml(stop_name, **params) -> None:
    """Print TwiML that starts (or stops) a transcription: <Start><Transcription …/></Start>."""
    response = VoiceResponse()
    if stop_name:
        verb = Stop()
        verb.transcription(name=stop_name)
    else:
        labels = {
            "inbound_label": params["inbound_track_label"],
            "outbound_label": params["outbound_track_label"],
        }
        params["status_callback_url"] = callback_url(
            params["status_callback_url"], labels, emulated=False
        )
        verb = Start()
        verb.transcription(**{k: v for k, v in params.items() if v is not None})
    response.append(verb)
    click.echo(response.to_xml(xml_declaration=True))
