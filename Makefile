# Two commands set up a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install browser demo test test-unit test-integration test-multinode lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch first, pinned: 2.13.0 is a CPU build on this machine's disk; an unpinned
	# torch would pull a multi-GB CUDA build. On GPU machines install the CUDA build of
	# the same version first (see README).
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/raft train examples/minilm_topics_lora.yaml

# Headless Chromium renders raft report's HTML in the tests (Debian's package; as root,
# or through sudo).
browser:
	@command -v chromium >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

test: install browser
	$(BIN)/ruff check .
	$(BIN)/pytest tests --durations=25

test-unit: install browser
	$(BIN)/pytest tests/unit

test-integration: install
	$(BIN)/pytest tests/integration

test-multinode: install
	$(BIN)/pytest tests/multinode

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The benchmark suite (benchmarks/suite.py): report in benchmarks/results/<date>.{json,md,png}.
# BENCH_ARGS="--quick" for a smoke test, "--only throughput,first_step" for some sections.
bench: install
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf runs .pytest_cache
