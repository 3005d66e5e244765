# Quick start: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench clean

# The venv is made once: after a change to pyproject.toml only the install runs again
# (`python -m venv` over a venv of another interpreter would leave it half of each).
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# The whole path on this machine, no mail server needed: an embedded SMTP sink, the
# daemon on a config made from config.example.yaml, a bounce round trip (docs/demo.md).
demo: $(BIN)/.installed
	$(BIN)/mailsync demo --once

# On every core (at most 4): most tests wait on a server, a daemon or a deadline, so two
# workers on two cores take ~0.55 of the time one does. `pytest FILE` alone runs serially.
test: $(BIN)/.installed
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4

lint: $(BIN)/.installed
	$(BIN)/pip install --quiet -e '.[test,dev]'
	$(BIN)/ruff check mailsync tests bench
	$(BIN)/mypy

bench: $(BIN)/.installed
	$(BIN)/python bench/config_bench.py

clean:
	rm -rf $(VENV) var demo .pytest_cache .hypothesis
