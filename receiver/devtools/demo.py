"""`receiver demo`: the whole loop on one machine, for a newcomer, in a few seconds.

Embedded Redis, the receiver under gunicorn, the emulator, one two-party call started through
the official ``twilio`` client, and the live tail of that call; then everything is shut down
and the temporary data removed.
"""

from __future__ import annotations

import secrets
import tempfile
import time
import uuid
from pathlib import Path

import click
import redis
from twilio.rest import Client

from receiver.config import redact_url
from receiver.devtools.conversation import Faults
from receiver.devtools.emulator import DEFAULT_ACCOUNT_SID, Emulator, EmulatorServer
from receiver.devtools.playback import SentCallback
from receiver.devtools.tail import run as run_tail
from receiver.devtools.tail import stream_keys
from receiver.server.embedded_redis import EmbeddedRedis, EmbeddedRedisError
from receiver.server.process import Served, ServeError, start
from receiver.storage.store import Keys
from receiver.views.callback import CALLBACK_PATH

# Seconds allowed beyond the conversation's length before the demo stops waiting for the call.
DEADLINE_MARGIN = 20.0


def start_receiver(redis_url: str, token: str, workdir: Path) -> Served:
    """The real receiver under gunicorn on a free loopback port; its log goes to a file."""
    env: dict[str, str | None] = {
        "REDIS_URL": redis_url,
        "TWILIO_AUTH_TOKEN": token,
        "TWILIO_ACCOUNT_SID": DEFAULT_ACCOUNT_SID,
        "WEB_CONCURRENCY": "1",
        "LOG_LEVEL": "warning",
        # The demo's own settings, whatever the shell has (a token file would win over its token).
        **dict.fromkeys(
            ("PUBLIC_BASE_URL", "PROXY_HOPS", "STREAM_PREFIX", "TWILIO_AUTH_TOKEN_FILE")
        ),
    }
    try:
        return start(env, workdir, ready_path="/readyz", timeout=20)
    except ServeError as error:
        raise click.ClickException(f"the receiver did not start: {error}") from None


def report(
    played: bool,
    deliveries: list[SentCallback],
    client: redis.Redis,
    keys: Keys,
    call_sid: str,
    began: float,
) -> bool:
    """Print what was sent and stored; whether every callback got a 2xx and was stored."""
    stored = client.xlen(keys.call(call_sid))
    partials = client.xlen(keys.partials(call_sid))
    answered = sorted({d.outcome for d in deliveries})
    click.echo(
        f"\nDone in {time.monotonic() - began:.1f}s: {len(deliveries)} callbacks "
        f"(answers: {', '.join(answered) or 'none'}), {stored + partials} events in "
        f"{keys.call(call_sid)} and {keys.partials(call_sid)} ({partials} partial results), "
        f"{client.zcard(keys.finals(call_sid))} final utterances in {keys.finals(call_sid)}."
    )
    refused = [d for d in deliveries if d.status is None or not 200 <= d.status < 300]
    if not played:
        click.echo("The call did not finish in time: not every callback was sent.", err=True)
    if refused:
        click.echo(
            f"{len(refused)} of {len(deliveries)} callbacks did not get a 2xx answer "
            "from the receiver.",
            err=True,
        )
    return played and not refused and stored + partials == len(deliveries)


def run_demo(speed: float, finals_only: bool, with_dashboard: bool) -> None:
    """See it all in a few seconds: Redis, receiver, emulator, one call, the live tail."""
    began = time.monotonic()
    token = secrets.token_hex(16)
    call_sid = f"CA{uuid.uuid4().hex}"
    keys = Keys()
    with tempfile.TemporaryDirectory(prefix="rtt-demo-") as tmp:
        workdir = Path(tmp)
        try:
            server = EmbeddedRedis(workdir / "redis").start()
        except EmbeddedRedisError as error:
            raise click.ClickException(str(error)) from None
        receiver: Served | None = None
        emulator = EmulatorServer(
            Emulator(DEFAULT_ACCOUNT_SID, token, faults=Faults(), speed=speed)
        )
        client = redis.Redis.from_url(server.url, decode_responses=True, socket_timeout=10)
        ok, interrupted = False, False
        try:
            click.echo(f"1/4 Embedded Redis     {redact_url(server.url)}")
            receiver = start_receiver(server.url, token, workdir)
            receiver_url = receiver.url
            click.echo(f"2/4 Receiver           {receiver_url}{CALLBACK_PATH} (gunicorn)")
            emulator.start()
            click.echo(f"3/4 Twilio emulator    {emulator.url}")
            if with_dashboard:
                from receiver.dashboard.demo import keep_calling

                keep_calling(
                    redis_url=server.url,
                    callback_url=f"{receiver_url}{CALLBACK_PATH}",
                    emulator_url=emulator.url,
                    account_sid=DEFAULT_ACCOUNT_SID,
                    token=token,
                    workdir=workdir,
                    every=emulator.emulator.conversation.length / speed / 2,
                )
            twilio = Client(DEFAULT_ACCOUNT_SID, token)
            twilio.api.base_url = emulator.url
            created = twilio.calls(call_sid).transcriptions.create(
                name="demo",
                track="both_tracks",
                status_callback_url=f"{receiver_url}{CALLBACK_PATH}",
                partial_results=True,
                inbound_track_label="customer",
                outbound_track_label="agent",
            )
            click.echo(f"4/4 Call {call_sid}, transcription {created.sid} (via twilio client)\n")
            playback = emulator.emulator.transcriptions[created.sid].playback
            # A safety net only: the playback ends by itself, even when every callback fails.
            deadline = (
                time.monotonic() + emulator.emulator.conversation.length / speed + DEADLINE_MARGIN
            )
            run_tail(
                client,
                url=server.url,
                keys=stream_keys(keys, call_sid),
                from_start=True,
                finals_only=finals_only,
                as_json=False,
                until_stopped=True,
                # A refused callback is never stored: stop following once all were sent.
                until=lambda: playback.finished.is_set() or time.monotonic() > deadline,
            )
            played = playback.wait(max(0.0, deadline - time.monotonic()))
            ok = report(played, playback.deliveries, client, keys, call_sid, began)
        except KeyboardInterrupt:
            click.echo("\nInterrupted.")
            interrupted = True
        finally:
            emulator.stop()
            if receiver:
                receiver.stop()
            client.close()
            server.stop()
            click.echo("Stopped the emulator, the receiver and Redis; demo data removed.")
    if interrupted:
        raise SystemExit(130)
    if not ok:
        raise SystemExit(1)
