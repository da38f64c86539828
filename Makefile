# Every target creates .venv and installs the project with its dev extras when missing
# or when pyproject.toml changed; nothing is installed by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-long chaos lint bench bench-quick fakewechat clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tagsync demo

test: $(STAMP)
	$(BIN)/python -m pytest

# Fault tests too long for make test's 10 minutes: Redis failover under Sentinel, a killed
# worker's heartbeat going stale. CI runs them after make test.
test-long: $(STAMP)
	$(BIN)/python -m pytest -m long

# The long reliability suite; each scenario appends its figures to chaos-results.jsonl.
chaos: $(STAMP)
	rm -f chaos-results.jsonl
	CHAOS_REPORT=chaos-results.jsonl $(BIN)/python -m pytest -m chaos -p no:cacheprovider
	$(BIN)/python -m tests.chaos_report chaos-results.jsonl

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

fakewechat: $(STAMP)
	$(BIN)/fakewechat

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
