# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint clean

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

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

.PHONY: demo
demo: $(BIN)/receiver   # the whole loop without Twilio, in about 12 seconds (docs/emulator.md)
	$(BIN)/receiver demo
