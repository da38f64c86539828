# Every target creates .venv and installs the project with its dev extras when missing
# or when the lock changed; nothing is installed by hand. requirements.lock pins every
# package with its hashes, so an upstream release never changes a build; `make upgrade`
# is the one deliberate way to move to newer releases.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
# How the lock is compiled: every extra, for any platform, with hashes.
COMPILE := $(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
	--generate-hashes --no-header --quiet -o $(LOCK)

.PHONY: demo dev test test-fast test-long chaos lint docs bench bench-quick fakewechat upgrade clean

$(STAMP): $(LOCK) pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tagsync demo

test: $(STAMP)
	$(BIN)/python -m pytest --durations=25

# The quick loop while editing: in-process tests only (no worker, server or command
# processes of their own; Redis and the simulator are the session's).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m 'not slow and not processes and not chaos and not long'

# Fault tests too long for make test's 10 minutes: Redis failover under Sentinel, a killed
# worker's heartbeat going stale. CI runs them after make test.
test-long: $(STAMP)
	$(BIN)/python -m pytest -m long

# The long reliability suite; each scenario appends its figures to chaos-results.jsonl.
chaos: $(STAMP)
	rm -f chaos-results.jsonl
	CHAOS_REPORT=chaos-results.jsonl $(BIN)/python -m pytest -m chaos -p no:cacheprovider
	$(BIN)/python -m tests.chaos_report chaos-results.jsonl

# The local stack of the README's first screen: the Procfile's processes with dev.env (Redis
# keeping its data in .tagsync/dev/), the tags of the curl examples created first.
dev: $(STAMP)
	$(BIN)/tagsync dev

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The docs site (docs/, mkdocs.yml); --strict fails on a broken link or a missing page.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir .site

# Newer releases, deliberately: recompile the lock, reinstall, and run lint and the tests.
upgrade: $(STAMP)
	$(COMPILE) --upgrade
	$(MAKE) lint test

bench: $(STAMP)
	$(BIN)/python -m bench

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

fakewechat: $(STAMP)
	$(BIN)/fakewechat

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .site
