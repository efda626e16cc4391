# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test test-tools lint audit clean

$(BIN)/receiver: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(BIN)/receiver
	$(BIN)/receiver serve

test: $(BIN)/receiver test-tools
	$(BIN)/ruff check receiver tests examples
	$(BIN)/pytest

# Debian's nginx, for the test of the nginx example (deploy/nginx/); it skips without one.
test-tools:
	@command -v nginx >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && (apt-get update -qq && apt-get install -y -qq nginx-light) >/dev/null; } \
	  || echo "nginx not installed: the nginx example's test will skip" >&2

lint: $(BIN)/receiver
	$(BIN)/ruff check receiver tests examples
	$(BIN)/ruff format --check receiver tests examples

# Known vulnerabilities in the installed dependencies (PyPI's advisory data). Not part of
# `make test`: it needs PyPI's JSON API, which offline and mirrored machines cannot reach.
# --strict fails when any dependency could not be checked, rather than reporting "none found".
audit: $(BIN)/receiver
	$(BIN)/pip-audit --skip-editable --strict

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

.PHONY: demo
demo: $(BIN)/receiver   # the whole loop without Twilio, in about 12 seconds (docs/emulator.md)
	$(BIN)/receiver demo
