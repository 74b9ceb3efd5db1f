# The README's commands. `make run` and `make test` set up everything they need on a fresh machine.
PY    ?= python3
VENV  := .venv
BIN   := $(VENV)/bin
STAMP := $(VENV)/.medtune-installed

.PHONY: run test test-slow unit integration lint bench ui setup clean

run: $(STAMP)            ## the retrain flow on the embedded default
	$(BIN)/medtune run

# pytest-xdist: TEST_WORKERS processes take whole test files (module fixtures run once). Most integration tests wait
# on subprocesses and servers for much of their time: on 2 cores pytest took 14.4 min on 2 workers against 21.3 in
# one process (fresh clones, 2026-12-06).
TEST_WORKERS ?= 2

test: $(STAMP)           ## lint, types, unit and integration tests
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy && $(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

test-slow: $(STAMP)      ## the slow tier only (several processes, kill-at-every-step, extra retrains); ~10 min
	$(BIN)/pytest -q --slow -m slow

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/pytest -q tests/integration

bench: $(STAMP)          ## benchmarks (slow; results go into benchmarks/README.md by hand)
	$(BIN)/python benchmarks/orchestration.py
	$(BIN)/python benchmarks/data_build.py
	$(BIN)/python benchmarks/hlora.py
	$(BIN)/python benchmarks/byo_vlm.py
	$(BIN)/python benchmarks/safety.py
	$(BIN)/python benchmarks/vqa_rad.py
	$(BIN)/python benchmarks/rank_search.py
	$(BIN)/python benchmarks/flix.py
	$(BIN)/python benchmarks/federated.py
	$(BIN)/python benchmarks/registry.py

ui: $(STAMP)
	$(BIN)/medtune ui

setup: $(STAMP)

# torch is installed first from the pinned CPU build; the lock is installed under the same constraint so that
# nothing can swap in a CUDA build. The project itself goes in last, editable, without touching the lock.
$(STAMP): pyproject.toml requirements-lock.txt constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -U "pip>=25"
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -r requirements-lock.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

clean:
	rm -rf .medtune params.yaml reports data/vlhealth
