"""`receiver emulate` and `receiver simulate`: the emulator from the command line.

Both share the playback options (conversation, speed, injected faults), so a pipeline can be tested
against the same behaviour whether it starts transcriptions through the REST resource
(``emulate``) or just wants N calls now (``simulate``).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from receiver.cli.options import api_key_options
from receiver.devtools.conversation import (
    DEFAULT_ERROR_CODE,
    DEFAULT_TIMESTAMP_DIGITS,
    ConversationError,
    Faults,
    load_conversation,
)
from receiver.devtools.emulator import (
    DEFAULT_ACCOUNT_SID,
    DEFAULT_AUTH_TOKEN,
    ApiError,
    Emulator,
    EmulatorServer,
    Transcription,
)
from receiver.devtools.playback import Summary
from receiver.protocol import TIMESTAMP_DIGITS, TRACK_SETTINGS, TRANSCRIPTION_ERRORS
from receiver.views.callback import CALLBACK_PATH

DEFAULT_EMULATOR_PORT = 8010
Probability = click.FloatRange(0.0, 1.0)


def playback_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Conversation, speed, Timestamp and fault options, turned into ``conversation``,
    ``faults``, ``speed`` and ``timestamp_digits``."""
    options = [
        click.option(
            "--conversation",
            "--script",  # an alias that command lines and docs may use
            "conversation_path",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Conversation to play (YAML or JSON); default: the built-in support call.",
        ),
        click.option(
            "--speed",
            type=click.FloatRange(min=0.01),
            default=1.0,
            show_default=True,
            help="Play this many times faster than real time.",
        ),
        click.option(
            "--duplicates", type=Probability, default=0.0, help="Chance a callback is sent twice."
        ),
        click.option(
            "--reorder", type=Probability, default=0.0, help="Chance a callback swaps places."
        ),
        click.option("--delay", type=Probability, default=0.0, help="Chance a callback is late."),
        click.option(
            "--max-delay",
            type=click.FloatRange(min=0.0),
            default=2.0,
            show_default=True,
            help="Seconds (conversation time) a late callback may lag.",
        ),
        click.option(
            "--error-at",
            type=click.FloatRange(min=0.0),
            help="Send transcription-error this many seconds in, then stop.",
        ),
        click.option(
            "--error-code",
            type=click.Choice(list(TRANSCRIPTION_ERRORS)),
            default=DEFAULT_ERROR_CODE,
            show_default=True,
            help="TranscriptionErrorCode of --error-at, from Twilio's documented range.",
        ),
        click.option(
            "--track-drift",
            type=click.FloatRange(min=0.0),
            default=0.0,
            show_default=True,
            help="Seconds the outbound track's results lag the inbound's, so SequenceIds "
            "follow production order, not speaking order.",
        ),
        click.option(
            "--timestamp-digits",
            type=click.Choice([str(d) for d in TIMESTAMP_DIGITS]),
            default=str(DEFAULT_TIMESTAMP_DIGITS),
            show_default=True,
            callback=lambda _ctx, _param, value: int(value),
            help="Fractional digits of Timestamp, as in Twilio's examples.",
        ),
        click.option(
            "--track-as-label",
            is_flag=True,
            help="Put the track label in Track, as some accounts receive it.",
        ),
        click.option("--seed", type=int, help="Seed for the faults, to replay the same run."),
    ]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        try:
            conversation = load_conversation(kwargs.pop("conversation_path"))
        except ConversationError as error:
            raise click.BadParameter(str(error), param_hint="--conversation") from None
        code = kwargs.pop("error_code")
        faults = Faults(
            duplicates=kwargs.pop("duplicates"),
            reorder=kwargs.pop("reorder"),
            delay=kwargs.pop("delay"),
            max_delay=kwargs.pop("max_delay"),
            error_at=kwargs.pop("error_at"),
            error_code=code,
            error_message=TRANSCRIPTION_ERRORS[code],
            track_as_label=kwargs.pop("track_as_label"),
            track_drift=kwargs.pop("track_drift"),
            seed=kwargs.pop("seed"),
        )
        return command(conversation=conversation, faults=faults, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def account_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option(
        "--auth-token",
        envvar="TWILIO_AUTH_TOKEN",
        default=DEFAULT_AUTH_TOKEN,
        show_default="$TWILIO_AUTH_TOKEN or a test token",
        show_envvar=False,
        # The receiver accepts a comma-separated list during a rotation: sign with the first.
        callback=lambda _ctx, _param, value: value.split(",")[0].strip(),
        help="Token the callbacks are signed with (the receiver's TWILIO_AUTH_TOKEN).",
    )(command)
    return click.option(
        "--account-sid",
        envvar="TWILIO_ACCOUNT_SID",
        default=DEFAULT_ACCOUNT_SID,
        show_default="$TWILIO_ACCOUNT_SID or a test SID",
    )(command)


def _token_source(token: str) -> str:
    if token == DEFAULT_AUTH_TOKEN:
        return f"the test token {DEFAULT_AUTH_TOKEN!r}"
    return "$TWILIO_AUTH_TOKEN" if os.environ.get("TWILIO_AUTH_TOKEN") == token else "--auth-token"


def _emulator(**kwargs: Any) -> Emulator:
    try:
        return Emulator(**kwargs)
    except ValueError as error:
        raise click.ClickException(str(error)) from None


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=DEFAULT_EMULATOR_PORT, show_default=True)
@click.option(
    "--allow-remote", is_flag=True, help="Also send callbacks to hosts other than loopback."
)
@account_options
@api_key_options("Also accept this API key SID (SK…) as a REST credential [env: TWILIO_API_KEY].")
@playback_options
def emulate(
    host,
    port,
    allow_remote,
    account_sid,
    auth_token,
    api_key,
    api_secret,
    conversation,
    faults,
    speed,
    timestamp_digits,
) -> None:
    """Run a local stand-in for Twilio's RealtimeTranscription REST resource.

    Point the official client at it (client.api.base_url, or --api-base-url of
    `receiver transcriptions start`); each transcription it starts plays the conversation and sends
    signed callbacks to its StatusCallbackUrl.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if bool(api_key) != bool(api_secret):
        raise click.UsageError("give both --api-key and --api-secret (TWILIO_API_KEY/SECRET)")
    emulator = _emulator(
        account_sid=account_sid,
        auth_token=auth_token,
        api_keys={api_key: api_secret} if api_key else {},
        conversation=conversation,
        faults=faults,
        speed=speed,
        allow_remote=allow_remote,
        timestamp_digits=timestamp_digits,
    )
    server = EmulatorServer(emulator, host, port, access_log=True)
    try:
        server.start()
    except OSError as error:
        raise click.ClickException(f"cannot listen on {host}:{port}: {error.strerror}") from None
    click.echo(
        f"Twilio emulator: {server.url}  (conversation {conversation.name!r}, speed {speed:g}x)"
    )
    click.echo(f"Account SID: {account_sid}; callbacks signed with {_token_source(auth_token)}")
    click.echo(
        f"Try: receiver transcriptions start CA{uuid.uuid4().hex} --api-base-url {server.url}"
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.stop()
    click.echo("Emulator stopped.")


def default_callback_url() -> str:
    public = os.environ.get("PUBLIC_BASE_URL", "").strip().rstrip("/")
    base = public or f"http://127.0.0.1:{os.environ.get('PORT', '8000')}"
    return base + CALLBACK_PATH


def start_calls(
    emulator: Emulator, calls: int, params: dict[str, str], account_sid: str
) -> list[Transcription]:
    """Start ``calls`` transcriptions on new CallSids through the emulator's own validation."""
    try:
        return [emulator.create(account_sid, f"CA{uuid.uuid4().hex}", params) for _ in range(calls)]
    except ApiError as error:
        emulator.shutdown()
        raise click.ClickException(f"{error.message} (Twilio error {error.code})") from None


def report(transcriptions: list[Transcription]) -> tuple[str, bool]:
    """A short text report of what was sent, and whether every callback got a 2xx."""
    total = Summary()
    lines = []
    for t in transcriptions:
        one = Summary()
        for delivery in t.playback.deliveries:
            one.add(delivery)
            total.add(delivery)
        outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(one.by_outcome.items()))
        lines.append(f"{t.call_sid}  {t.sid}  {one.sent} callbacks  ({outcomes})")

    def counts(values: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(values.items())) or "none"

    lines += [
        f"Sent {total.sent} callbacks for {len(transcriptions)} call(s).",
        f"  by event:  {counts(total.by_event)}",
        f"  answers:   {counts(total.by_outcome)}",
        f"  injected:  {counts(total.by_fault)}",
    ]
    ok = all(k.isdigit() and 200 <= int(k) < 300 for k in total.by_outcome)
    return "\n".join(lines), ok


@click.command()
@click.option(
    "--url",
    default=default_callback_url,
    show_default="$PUBLIC_BASE_URL or http://127.0.0.1:$PORT, + /transcriptions/callback",
    help="The receiver's callback URL (StatusCallbackUrl).",
)
@click.option("--calls", type=click.IntRange(1, 500), default=1, show_default=True)
@click.option("--method", type=click.Choice(["POST", "GET"]), default="POST", show_default=True)
@click.option(
    "--track",
    type=click.Choice(TRACK_SETTINGS),
    default="both_tracks",
    show_default=True,
)
@click.option("--partial-results/--no-partial-results", default=True, show_default=True)
@click.option("--inbound-label", default="customer", show_default=True)
@click.option("--outbound-label", default="agent", show_default=True)
@click.option("--name", help="Name of each transcription.")
@click.option("--allow-remote", is_flag=True, help="Allow a callback URL that is not loopback.")
@account_options
@playback_options
def simulate(
    url,
    calls,
    method,
    track,
    partial_results,
    inbound_label,
    outbound_label,
    name,
    allow_remote,
    account_sid,
    auth_token,
    conversation,
    faults,
    speed,
    timestamp_digits,
) -> None:
    """Play N simulated calls against a receiver and report what was sent.

    Callbacks are signed with --auth-token, which must be one of the receiver's
    TWILIO_AUTH_TOKEN values. Exits 1 when any callback did not get a 2xx answer.
    """
    emulator = _emulator(
        account_sid=account_sid,
        auth_token=auth_token,
        conversation=conversation,
        faults=faults,
        speed=speed,
        allow_remote=allow_remote,
        timestamp_digits=timestamp_digits,
    )
    params = {
        "StatusCallbackUrl": url,
        "StatusCallbackMethod": method,
        "Track": track,
        "PartialResults": "true" if partial_results else "false",
        "InboundTrackLabel": inbound_label,
        "OutboundTrackLabel": outbound_label,
    }
    if name:
        params["Name"] = name
    click.echo(
        f"Simulating {calls} call(s) of {conversation.length / speed:.1f}s against {url} "
        f"(conversation {conversation.name!r}, speed {speed:g}x)"
    )
    transcriptions = start_calls(emulator, calls, params, account_sid)
    try:
        emulator.wait()
    except KeyboardInterrupt:
        emulator.shutdown()
        emulator.wait(10)
        click.echo("Interrupted: the calls were stopped.")
    text, ok = report(transcriptions)
    click.echo(text)
    if not ok:
        raise SystemExit(1)
