# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test test-tools lint audit clean bench demo

$(BIN)/receiver: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[tools,test]'
	touch $@

run: $(BIN)/receiver
	$(BIN)/receiver serve

test: $(BIN)/receiver test-tools
	$(BIN)/ruff check receiver tests examples
	$(BIN)/mypy
	$(BIN)/pytest

# Debian's nginx, wrk and chromium, for the tests of the nginx example, of `receiver bench` and of
# the dashboard in a browser; when they
# cannot be installed (not root, no apt-get), those tests skip or fall back and say so.
test-tools:
	@for tool in nginx:nginx-light wrk:wrk chromium:chromium; do \
	  command -v $${tool%%:*} >/dev/null && continue; \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { apt-get install -y -qq $${tool#*:} >/dev/null 2>&1 || \
	      { apt-get update -qq && apt-get install -y -qq $${tool#*:} >/dev/null; }; }; } || \
	  echo "$${tool%%:*} not installed: its tests will skip or fall back" >&2; \
	done

lint: $(BIN)/receiver
	$(BIN)/ruff check receiver tests examples
	$(BIN)/ruff format --check receiver tests examples

# Known vulnerabilities in the installed dependencies (PyPI's advisory data). Not part of
# `make test`: it needs PyPI's JSON API, which offline and mirrored machines cannot reach.
# --strict fails when any dependency could not be checked, rather than reporting "none found".
audit: $(BIN)/receiver
	$(BIN)/pip-audit --skip-editable --strict

# `receiver bench` prefers wrk (installed by test-tools); it falls back to a Python generator.
bench: $(BIN)/receiver test-tools
	$(BIN)/receiver bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

demo: $(BIN)/receiver   # the whole loop without Twilio, in about 12 seconds (docs/emulator.md)
	$(BIN)/receiver demo
