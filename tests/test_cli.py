"""The `receiver` command group: every command listed, each imported only when it runs."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from receiver.cli import COMMANDS, main

# Run `receiver` with a tools-only dependency made unimportable, as in a production image
# installed without the tools extra.
WITHOUT_RICH = """
import sys
sys.modules["rich"] = None
from receiver.cli import main
main(sys.argv[1:])
"""


def run_without_rich(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_RICH, *args], capture_output=True, text=True, timeout=60
    )


def test_every_command_is_listed_and_loads():
    listed = CliRunner().invoke(main, ["--help"]).output
    for name in COMMANDS:
        assert name in listed
        result = CliRunner().invoke(main, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)


def test_serve_needs_no_tools_extra():
    result = run_without_rich("serve", "--help")
    assert result.returncode == 0, result.stderr
    assert "embedded Redis" in result.stdout


def test_a_tool_without_its_extra_says_how_to_install_it():
    result = run_without_rich("tail", "--help")
    assert result.returncode == 1
    assert "pip install 'rtt-receiver[tools]'" in result.stderr
    assert "Traceback" not in result.stderr
