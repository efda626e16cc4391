"""`receiver tail`: follow the streams live and show a readable transcript.

It reads with plain ``XREAD`` (no consumer group), so it never acknowledges, claims or delays
anything for the real consumers. On a terminal, partial results are drawn in a live area at the
bottom and rewritten in place until their final arrives, which is then printed for good above
it; elsewhere (a pipe, a file) only lines that will not change are printed, without colours.
``--json`` prints one normalized event (the stream entry) per line, for ``jq``.

Every stored value is caller-controlled text: C0 and C1 control characters are shown as
visible escapes (``\x1b``), so a transcript cannot set the window title, write the clipboard,
clear the screen or hide a link (``--json`` escapes them as JSON does).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import click
import redis
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from receiver.config import redact_url
from receiver.storage.store import Keys

BLOCK_MS = 1000
TRACK_STYLES = {"inbound": "cyan", "outbound": "magenta"}
LABEL_WIDTH = 10

Entry = tuple[str, dict[str, str]]

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def visible(text: str) -> str:
    """``text`` with every C0/C1 control character replaced by its escape, e.g. ``\x1b``."""
    return CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def stream_keys(keys: Keys, call_sid: str | None) -> list[str]:
    """What to follow: every call's events in ``rtt:events``; for one call, its stream (the
    record: lifecycle and finals) and its partials stream (partial results, kept briefly)."""
    return [keys.call(call_sid), keys.partials(call_sid)] if call_sid else [keys.events]


def latest_id(client: redis.Redis, key: str) -> str:
    """The id of the stream's last entry, so "from now" survives a reconnection."""
    newest = client.xrevrange(key, count=1)
    return newest[0][0] if newest else "0-0"


def _entry_order(entry: Entry) -> tuple[int, ...]:
    return tuple(int(part) for part in entry[0].split("-"))


def follow(
    client: redis.Redis,
    keys: Sequence[str],
    *,
    from_start: bool,
    status: Callable[[str], None],
    url: str,
    ready: Callable[[], None] = lambda: None,
    block_ms: int = BLOCK_MS,
    retry_delays: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0),
    finished: Callable[[], bool] = lambda: False,
) -> Iterator[Entry]:
    """Every entry of ``keys`` after the starting point, across Redis restarts, until a read
    finds nothing new for ``block_ms`` while ``finished()`` holds (by default: forever). The
    entries of one read are merged by id (the streams of one call share a server clock)."""
    last: dict[str, str] | None = dict.fromkeys(keys, "0-0") if from_start else None
    failures = 0
    announced = False
    while True:
        try:
            if last is None:
                last = {key: latest_id(client, key) for key in keys}
            if not announced:
                # Only now is the starting point fixed: what is written from here on is shown.
                ready()
                announced = True
            if failures:
                client.ping()
                after = ", ".join(last.values())
                status(f"Reconnected to Redis at {redact_url(url)}; resuming after entry {after}.")
                failures = 0
            answer = client.xread(last, count=200, block=block_ms)
        except (redis.AuthenticationError, redis.exceptions.AuthorizationError) as error:
            # A subclass of ConnectionError, but retrying cannot fix a wrong password or user.
            raise click.ClickException(
                f"Redis at {redact_url(url)} refused the credentials ({type(error).__name__}: "
                f"{error}); check the user name and password in --redis-url or $REDIS_URL."
            ) from None
        except redis.exceptions.NoPermissionError as error:
            raise click.ClickException(
                f"Redis at {redact_url(url)}: the user may not read {', '.join(keys)} ({error})."
            ) from None
        except (redis.ConnectionError, redis.TimeoutError) as error:
            if not failures:
                status(
                    f"Redis at {redact_url(url)} is unavailable ({type(error).__name__}); "
                    "reconnecting..."
                )
            time.sleep(retry_delays[min(failures, len(retry_delays) - 1)])
            failures += 1
            continue
        if not answer and finished():
            return
        read: list[Entry] = []
        for stream, entries in answer or ():
            for entry_id, fields in entries:
                last[stream] = entry_id
                read.append((entry_id, fields))
        yield from sorted(read, key=_entry_order)


@dataclass
class Stopper:
    """Knows when every transcription seen has stopped (for ``--until-stopped``).

    A stopped transcription stays stopped: a content delivered late (Twilio does not promise
    order) is still shown, but never makes the tail wait for a second ``stopped``."""

    active: set[str] = field(default_factory=set)
    stopped: set[str] = field(default_factory=set)

    def record(self, fields: dict[str, str]) -> None:
        sid = fields.get("transcription_sid", "")
        if fields.get("event") == "stopped":
            self.active.discard(sid)
            self.stopped.add(sid)
        elif sid not in self.stopped:
            self.active.add(sid)

    def done(self) -> bool:
        return bool(self.stopped) and not self.active


def short_call(call_sid: str) -> str:
    return f"CA…{call_sid[-6:]}"


def clock(fields: dict[str, str]) -> str:
    """HH:MM:SS of Twilio's Timestamp (UTC), or of received_at when it has none."""
    stamp = fields.get("timestamp") or fields.get("received_at") or ""
    return stamp[11:19] if len(stamp) >= 19 else "--:--:--"


def utterance_line(fields: dict[str, str], partial: bool) -> Text:
    track = fields.get("track", "")
    label = fields.get("track_label") or track or "?"
    line = Text()
    line.append(f"{clock(fields)}  ", style="dim")
    line.append(f"{short_call(fields.get('call_sid', ''))}  ", style="dim")
    line.append(f"{label[:LABEL_WIDTH]:<{LABEL_WIDTH}}  ", style=TRACK_STYLES.get(track, "yellow"))
    if partial:
        line.append(f"{fields.get('transcript', '')}…", style="italic dim")
    else:
        line.append(fields.get("transcript", ""))
    return line


def event_line(fields: dict[str, str]) -> Text:
    """Start, stop, error and any other event, as one visible line."""
    event = fields.get("event", "?")
    line = Text()
    line.append(f"{clock(fields)}  ", style="dim")
    line.append(f"{short_call(fields.get('call_sid', ''))}  ", style="dim")
    sid = fields.get("transcription_sid", "")
    if event == "started":
        details = [
            fields.get("name"),
            fields.get("track_setting"),
            fields.get("language_code"),
            "partials" if fields.get("partial_results") == "true" else None,
        ]
        labels = [fields.get("inbound_track_label"), fields.get("outbound_track_label")]
        if any(labels):
            details.append(" / ".join(label or "-" for label in labels))
        shown = ", ".join(d for d in details if d)
        line.append(f"── transcription started {sid}", style="bold green")
        if shown:
            line.append(f" ({shown})", style="green")
    elif event == "stopped":
        line.append(f"── transcription stopped {sid}", style="bold green")
    elif event == "error":
        code = fields.get("error_code") or "?"
        message = fields.get("error_message") or ""
        line.append(f"!! transcription error {code}: {message} ({sid})", style="bold red")
    else:
        line.append(f"·· {event} ({sid})", style="yellow")
    return line


def sequence(fields: dict[str, str]) -> int | None:
    raw = fields.get("sequence_id", "")
    return int(raw) if raw.isdigit() else None


@dataclass
class Renderer:
    """Turns entries into terminal output; ``live`` is set when partials can be rewritten.

    Callbacks may arrive out of order, so a partial is drawn only when it is newer (by
    ``sequence_id``) than the final and the partial already seen on its track, and never once
    its transcription has stopped: a late partial would otherwise stay on screen for good."""

    console: Console
    finals_only: bool
    live: Live | None = None
    partials: dict[tuple[str, str], Text] = field(default_factory=dict)
    partial_seq: dict[tuple[str, str], int] = field(default_factory=dict)
    final_seq: dict[tuple[str, str], int] = field(default_factory=dict)
    stopped: set[str] = field(default_factory=set)

    def show(self, fields: dict[str, str]) -> None:
        fields = {name: visible(value) for name, value in fields.items()}
        key = (fields.get("transcription_sid", ""), fields.get("track", ""))
        seq = sequence(fields)
        if fields.get("event") == "content":
            if fields.get("final") == "false":
                if self.live and not self.finals_only and self._is_news(key, seq):
                    self.partials[key] = utterance_line(fields, partial=True)
                    if seq is not None:
                        self.partial_seq[key] = seq
                    self._refresh()
                return
            if seq is not None:
                self.final_seq[key] = max(seq, self.final_seq.get(key, seq))
            shown = self.partial_seq.get(key)
            if seq is None or shown is None or shown <= self.final_seq[key]:
                # A late final of an earlier utterance leaves the newer partial in place.
                self.partials.pop(key, None)
            self._print(utterance_line(fields, partial=False))
            return
        if fields.get("event") == "stopped":
            self.stopped.add(key[0])
        if fields.get("event") in ("stopped", "error"):
            for pending in [k for k in self.partials if k[0] == key[0]]:
                del self.partials[pending]
        self._print(event_line(fields))

    def _is_news(self, key: tuple[str, str], seq: int | None) -> bool:
        if key[0] in self.stopped:
            return False
        if seq is None:
            return True
        return seq > self.final_seq.get(key, -1) and seq > self.partial_seq.get(key, -1)

    def status(self, message: str) -> None:
        self._print(Text(message, style="bold yellow"))

    def _print(self, line: Text) -> None:
        # Redraw the live area first, so the print never brings back a partial just finalized.
        self._refresh()
        self.console.print(line, soft_wrap=not self.live, highlight=False)

    def _refresh(self) -> None:
        if self.live:
            self.live.update(Group(*self.partials.values()), refresh=True)


def run(
    client: redis.Redis,
    *,
    url: str,
    keys: Sequence[str],
    from_start: bool,
    finals_only: bool,
    as_json: bool,
    until_stopped: bool,
    console: Console | None = None,
    until: Callable[[], bool] = lambda: False,
) -> None:
    """Follow ``keys`` until interrupted, or until its transcriptions stop (``until_stopped``)
    or ``until()`` holds, and then a read finds nothing new."""
    stopper = Stopper()
    out = console or Console(highlight=False)
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    where = "the start" if from_start else "now"
    following = f"Following {', '.join(keys)} from {where} on {redact_url(url)} (Ctrl-C to stop)"

    def announce() -> None:
        # On a terminal it belongs above the transcript; otherwise stdout is for data only.
        (out if out.is_terminal and not as_json else errors).print(following, style="dim")

    # Once all have stopped, one more quiet read: late deliveries are still printed.
    def finished() -> bool:
        return (until_stopped and stopper.done()) or until()

    if as_json:
        for entry_id, fields in follow(
            client,
            keys,
            from_start=from_start,
            url=url,
            status=errors.print,
            ready=announce,
            finished=finished,
        ):
            if not (finals_only and fields.get("final") == "false"):
                sys.stdout.write(json.dumps({"entry_id": entry_id, **fields}) + "\n")
                sys.stdout.flush()
            stopper.record(fields)
        return
    renderer = Renderer(out, finals_only)
    status = renderer.status if out.is_terminal else errors.print
    live = Live(console=out, auto_refresh=False, transient=True) if out.is_terminal else None
    if live:
        live.start()
        renderer.live = live
    try:
        entries = follow(
            client,
            keys,
            from_start=from_start,
            url=url,
            status=status,
            ready=announce,
            finished=finished,
        )
        for _entry_id, fields in entries:
            renderer.show(fields)
            stopper.record(fields)
    finally:
        if live:
            renderer.partials.clear()
            live.stop()
