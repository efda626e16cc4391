# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint clean bench bench-tools

$(BIN)/receiver: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(BIN)/receiver
	$(BIN)/receiver serve

test: $(BIN)/receiver
	$(BIN)/ruff check receiver tests
	$(BIN)/pytest

lint: $(BIN)/receiver
	$(BIN)/ruff check receiver tests
	$(BIN)/ruff format --check receiver tests

# wrk: the load generator `receiver bench` prefers (it falls back to a Python one without it).
bench-tools:
	@command -v wrk >/dev/null || { command -v apt-get >/dev/null && \
	  { apt-get install -y -qq wrk || { apt-get update -qq && apt-get install -y -qq wrk; }; }; } || \
	  echo "wrk not installed: apt-get install wrk (Debian/Ubuntu) or brew install wrk (macOS)"

bench: $(BIN)/receiver bench-tools
	$(BIN)/receiver bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
