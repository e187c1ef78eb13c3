# `make demo` and `make test` install what they need (scripts/setup.sh), then run.
SHELL := /bin/bash
CARGO ?= cargo
export SEXTANT_VENV := $(CURDIR)/.venv

.PHONY: setup demo test bench lab crds fmt lint

setup:
	@bash scripts/setup.sh

demo: setup
	$(CARGO) run --release -q -p sextantctl -- simulate

test: setup
	$(CARGO) fmt --all -- --check
	@if command -v cargo-nextest >/dev/null; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi
	$(CARGO) test --workspace --doc

bench: setup
	$(CARGO) run --release -q -p sextantctl -- bench
	$(CARGO) bench -q -p sextant-agent --bench p3_cni
	$(CARGO) bench -q -p sextant-agent --bench p4a_service
	$(CARGO) bench -q -p sextant-operator --bench p5_webhook
	$(CARGO) bench -q -p sextant-scheduler-ext --bench p6_filter

lab: setup
	$(CARGO) build --release -q -p sextant-agent --bins
	$(CARGO) build --release -q -p sextantctl
	./target/release/sextantctl lab

crds:
	$(CARGO) run -q -p sextant-crds --bin crdgen

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
