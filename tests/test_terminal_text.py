"""`receiver tail` shows stored text, never terminal controls: a transcript or a label is text
any caller with a signed callback chose."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from receiver.devtools.tail import Renderer, visible

ATTACKS = [
    "\x1b]0;owned\x07",  # window title
    "\x1b]52;c;ZWNobyBoaQ==\x07",  # clipboard
    "\x1b[2J",  # clear the screen
    "\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\",  # OSC 8 link
    "\x9b2J",  # C1 CSI
    "\x9d0;owned\x9c",  # C1 OSC
]


def rendered(fields: dict[str, str]) -> str:
    out = io.StringIO()
    Renderer(Console(file=out, force_terminal=False, width=200), finals_only=False).show(fields)
    return out.getvalue()


@pytest.mark.parametrize("attack", ATTACKS)
def test_controls_in_transcripts_labels_and_errors_are_shown_escaped(attack):
    shown = [
        rendered({"event": "content", "final": "true", "transcript": f"hi {attack}", "track": "x"}),
        rendered({"event": "content", "final": "true", "track_label": attack, "transcript": ""}),
        rendered({"event": "started", "name": attack, "inbound_track_label": attack}),
        rendered({"event": "error", "error_code": "1", "error_message": attack}),
        rendered({"event": attack}),
    ]
    for text in shown:
        assert not any(0x80 <= ord(c) <= 0x9F or (ord(c) < 0x20 and c != "\n") for c in text)
        assert "\\x1b" in text or "\\x9" in text


def test_visible_keeps_text_and_escapes_controls():
    assert visible("héllo wörld ✓") == "héllo wörld ✓"
    assert visible("a\x00b\x7fc\x85d\n") == "a\\x00b\\x7fc\\x85d\\x0a"
