# sse-fast: every command people, pre-commit and CI use. `make` alone prints this help.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
HOST ?= 127.0.0.1
PORT ?= 8000
# The extension is rebuilt when any of these change (not the fuzz targets in rust/fuzz: their own workspace).
RUST_SRC := $(shell find rust -path rust/fuzz -prune -o \( -name '*.rs' -o -name 'Cargo.toml' \) -print) Cargo.toml pyproject.toml
STAMP := $(VENV)/.built

.DEFAULT_GOAL := help
.PHONY: help venv build wheel run test fuzz fuzz-smoke fuzz-cmin test-rust test-python test-js test-model lint fmt bench bench-callgrind bench-fanout bench-ingest bench-churn loadtest loadtest-smoke chaos chaos-smoke soak soak-smoke clean

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip
	$(PY) -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
	  print("\n".join(p["dependencies"] + p["optional-dependencies"]["dev"]))' > $(VENV)/requirements.txt
	$(PIP) install -q -r $(VENV)/requirements.txt
	touch $@

venv: $(VENV)/.deps ## Create .venv with every dependency

$(STAMP): $(VENV)/.deps $(RUST_SRC)
	$(VENV)/bin/maturin develop --release -q
	touch $@

build: $(STAMP) ## Build the release extension into .venv

# The wheel and the sdist are rebuilt when the extension's or the package's sources change.
WHEEL_SRC := $(RUST_SRC) $(shell find python/sse_fast -type f -not -name '*.so' -not -path '*/__pycache__/*') README.md LICENSE
dist/.built: $(WHEEL_SRC) | $(VENV)/.deps
	rm -f dist/sse_fast-*.whl dist/sse_fast-*.tar.gz
	$(VENV)/bin/maturin build --release -q -i $(PY) -o dist
	$(VENV)/bin/maturin sdist -o dist
	touch $@

wheel: dist/.built ## Build the abi3 wheel (CPython 3.11+) and the sdist into dist/: what `pip install sse-fast` installs

run: build ## Run the server on $(HOST):$(PORT) with the embedded in-memory broker
	$(VENV)/bin/sse-fast serve --host $(HOST) --port $(PORT)

test: lint test-rust fuzz-smoke loadtest-smoke chaos-smoke soak-smoke test-python test-js ## Run lint, the Rust tests, the fuzz smoke, the load-test smoke, the chaos smoke, the soak smoke, the Python tests and the browser tests (fails if any collects nothing)

# Fuzzing (issue 14; docs/reliability.md): cargo-fuzz's libFuzzer on stable Rust (RUSTC_BOOTSTRAP=1 lets it use the
# nightly flags it needs). Each target starts from its committed corpus, rust/fuzz/corpus/<target>/, and stops at the
# first panic, failed property or allocation past the limits, leaving the input in rust/fuzz/artifacts/<target>/.
FUZZ_TARGETS := decoder encode topic cursor queue replay hub
FUZZ_RUNS ?= 1000000
FUZZ_SMOKE_SECONDS ?= 30
FUZZ_SMOKE_JOBS ?= 2
FUZZ_LIMITS := -rss_limit_mb=1024 -malloc_limit_mb=64
FUZZ := RUSTC_BOOTSTRAP=1 cargo fuzz
FUZZ_DIR := --fuzz-dir rust/fuzz

fuzz: ## Every fuzz target for FUZZ_RUNS executions (default 1,000,000): minutes
	$(FUZZ) build $(FUZZ_DIR)
	@for t in $(FUZZ_TARGETS); do \
	  echo "== fuzz $$t: $(FUZZ_RUNS) runs"; start=$$(date +%s); \
	  $(FUZZ) run $(FUZZ_DIR) $$t -- -runs=$(FUZZ_RUNS) $(FUZZ_LIMITS) -print_final_stats=1 2>&1 \
	    | grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+[[:space:]]+DONE)|panicked|ERROR|SUMMARY' ; \
	  [ $${PIPESTATUS[0]} -eq 0 ] || exit 1; echo "== fuzz $$t: $$(( $$(date +%s) - start )) s"; \
	done

fuzz-smoke: ## Every fuzz target for FUZZ_SMOKE_SECONDS (default 30 s), FUZZ_SMOKE_JOBS (2) at a time, in make test
	$(FUZZ) build $(FUZZ_DIR)
	FUZZ_SMOKE_SECONDS=$(FUZZ_SMOKE_SECONDS) FUZZ_SMOKE_JOBS=$(FUZZ_SMOKE_JOBS) FUZZ_LIMITS="$(FUZZ_LIMITS)" \
	  rust/fuzz/smoke.sh $(FUZZ_TARGETS)

# -set_cover_merge keeps every feature in far fewer files than cmin's default greedy merge (a quarter of the size).
fuzz-cmin: ## Minimize every committed fuzz corpus (cargo fuzz cmin) after a long run
	@for t in $(FUZZ_TARGETS); do $(FUZZ) cmin $(FUZZ_DIR) $$t -- -set_cover_merge=1; done

test-rust: ## cargo test for the workspace's core crate
	cargo test -p sse-fast-core 2>&1 | tee $(VENV)/cargo-test.log
	@grep -qE 'test result: ok\. [1-9][0-9]* passed' $(VENV)/cargo-test.log || { echo "cargo test ran no test"; exit 1; }

# The browser SDK's dev dependencies (typescript, playwright-core, esbuild, centrifuge), from js/package-lock.json.
js/node_modules/.package-lock.json: js/package.json js/package-lock.json
	npm --prefix js ci --no-audit --no-fund

test-js: build js/node_modules/.package-lock.json ## The browser SDK in headless Chromium against real servers, and its size against centrifuge
	npm --prefix js test 2>&1 | tee $(VENV)/js-test.log
	@grep -qE '^(# |ℹ )pass [1-9]' $(VENV)/js-test.log || { echo "npm test ran no test"; exit 1; }

test-python: build wheel ## pytest (exit 5, no test collected, is a failure; tests/test_wheel.py installs dist/'s wheel)
	$(PY) -m pytest

MODEL_EXAMPLES ?= 2000
test-model: build ## The broker conformance model test, longer: MODEL_EXAMPLES random sequences per broker (default 2,000)
	SSE_FAST_MODEL_EXAMPLES=$(MODEL_EXAMPLES) $(PY) -m pytest tests/test_conformance_model.py --timeout 3600

lint: build js/node_modules/.package-lock.json ## ruff, mypy strict, import contracts (lint-imports), stubtest, cargo fmt --check, clippy -D warnings, tsc on the browser SDK
	$(VENV)/bin/ruff check python tests bench loadtest
	$(VENV)/bin/ruff format --check python tests bench loadtest
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m mypy.stubtest sse_fast._core
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -q -- -D warnings
	npm --prefix js run check

fmt: venv ## Format Rust and Python
	cargo fmt --all
	$(VENV)/bin/ruff format python tests bench loadtest
	$(VENV)/bin/ruff check --fix python tests bench loadtest

# pytest-benchmark saves runs per machine id; the first run has none to compare with (a warning, an error under -W error).
# BENCH_ARGS='--benchmark-compare-fail=median:20%' turns a regression against the baseline into a failure.
BENCH_ARGS ?=
BENCH_SAVED = $(wildcard .benchmarks/$(shell $(PY) -c 'from pytest_benchmark.utils import get_machine_id as m; print(m())')/*.json)

bench: build ## Micro-benchmarks (pytest-benchmark) against the pure-Python reference, compared with the saved baseline, then bench-callgrind
	$(PY) -m pytest bench -p no:cacheprovider --benchmark-only --benchmark-autosave $(if $(BENCH_SAVED),--benchmark-compare,) --benchmark-group-by=group -o testpaths=bench $(BENCH_ARGS)
	$(PY) bench/callgrind/run.py $(CALLGRIND_ARGS)

# Instruction counts of a fixed in-process fan-out under valgrind's callgrind (issue 17): two runs must agree within
# 1%, and Ir per delivery may rise at most 2% over bench/results/callgrind.json. CALLGRIND_ARGS='--update' takes a
# new baseline after an intended change (bench/callgrind/run.py's docstring has the workflow).
CALLGRIND_ARGS ?=

bench-callgrind: build ## Instruction counts (callgrind) of a fixed fan-out against bench/results/callgrind.json; about a minute
	$(PY) bench/callgrind/run.py $(CALLGRIND_ARGS)

clean: ## Remove build output
	rm -rf target dist $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

FANOUT_ARGS ?=
LOADTEST_ARGS ?=

bench-fanout: build ## Fan-out: sse-fast against the granian floor, nchan and sse-starlette, pinned, N = 1,000 and 10,000 (bench/results/fanout.md)
	$(PY) bench/fanout/run.py $(FANOUT_ARGS)

INGEST_ARGS ?=

bench-ingest: build ## Publish ingest: POST /api/messages per server core with wrk, sse-fast against sse-starlette and the granian floor (bench/results/ingest.md)
	$(PY) bench/ingest.py $(INGEST_ARGS)

bench-churn: build ## 10,000 connect/disconnect cycles after a warm-up: the worker's memory must stay flat
	$(PY) bench/churn.py

loadtest: build ## Locust headless for 3 minutes (a local server, or LOADTEST_ARGS='--host URL'): CSV and HTML in loadtest/results/
	$(PY) loadtest/run.py $(LOADTEST_ARGS)

loadtest-smoke: build ## Locust for 20 s with 36 users against a local server; fails on any error, lost or duplicated message
	$(PY) loadtest/run.py --smoke

# Soak (issue 14; docs/reliability.md): steady mixed load on one server (SOAK_BROKER=memory or redis: a private
# redis-server on a free port); RSS, fds, connections, tasks, mailboxes, acks (and Redis memory) sampled every 10 s
# must not trend upward after the warm-up. CSV and PNG in loadtest/results/soak/.
SOAK_MINUTES ?= 30
SOAK_BROKER ?= memory

soak: build ## Soak for SOAK_MINUTES (default 30) with SOAK_BROKER (memory or redis): fails on an upward trend
	SOAK_MINUTES=$(SOAK_MINUTES) SOAK_BROKER=$(SOAK_BROKER) $(PY) loadtest/soak.py

soak-smoke: build ## The soak for 40 s (10 s warm-up, a sample every 2 s), in make test
	$(PY) loadtest/soak.py --smoke --out loadtest/results/soak-smoke

# Chaos (issue 14; docs/reliability.md): three nodes on a private redis-server (never 6379), a node SIGKILLed and
# restarted, Redis restarted empty, stalled and randomly reconnecting subscribers, then a memory-broker node killed.
CHAOS_SECONDS ?= 180
CHAOS_ARGS ?=

chaos: build ## Chaos run, CHAOS_SECONDS (default 180) on Redis, half of it on Sentinel with a failover, a memory run (6 min): ledger, RSS, p99, hangs (bench/results/chaos.md)
	CHAOS_SECONDS=$(CHAOS_SECONDS) $(PY) loadtest/chaos.py $(CHAOS_ARGS)

chaos-smoke: build ## The chaos run in under a minute (57 s measured) with 30 subscribers, in make test (loadtest/results/chaos-smoke.md, ignored)
	$(PY) loadtest/chaos.py --smoke
