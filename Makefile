# One entry point for people and CI. Every target bootstraps .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: install demo test check bench stop server sandbox schema clean

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the pinned dependencies

demo: $(STAMP) ## run the whole pipeline on the embedded default
	$(BIN)/campaignops demo

test: $(STAMP) ## scripts/check: lint, strict types, duplicates of the change, the test suite
	PYTEST_ARGS="$(PYTEST_ARGS)" scripts/check

check: test

bench: $(STAMP) ## benchmarks; numbers land in docs/bench-*.md
	$(BIN)/python -m campaignops.bench $(BENCH_ARGS)

server: $(STAMP) ## start the local Prefect server (UI on http://127.0.0.1:4200)
	$(BIN)/campaignops server start

sandbox: $(STAMP) ## run the ESP sandbox in the foreground
	$(BIN)/campaignops esp-sandbox

stop: ## stop the Prefect server and ESP sandbox the demo started
	@if [ -x $(BIN)/campaignops ]; then $(BIN)/campaignops server stop; else echo "nothing to stop"; fi

schema: $(STAMP) ## regenerate docs/brief.schema.json and docs/lifecycle.schema.json
	$(BIN)/campaignops brief schema > docs/brief.schema.json
	$(BIN)/campaignops lifecycle schema > docs/lifecycle.schema.json

clean: stop
	rm -rf .campaignops
