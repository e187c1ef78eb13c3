# `make demo` and `make test` install what they need (scripts/setup.sh), then run.
SHELL := /bin/bash
CARGO ?= cargo
export SEXTANT_VENV := $(CURDIR)/.venv

.PHONY: setup demo test test-suite bench lab cluster cluster-down crds docs images fmt lint

setup:
	@bash scripts/setup.sh

demo: setup
	$(CARGO) run --release -q -p sextantctl -- simulate

# Tests that cannot run here fail unless SEXTANT_SKIP names their tier
# (kernel, cluster, cloud, daemon, all); the skips are listed at the end,
# whether or not the run passed.
test: setup
	$(CARGO) fmt --all -- --check
	@bash scripts/skip-summary.sh --clear
	@status=0; $(MAKE) --no-print-directory test-suite || status=$$?; \
		bash scripts/skip-summary.sh; exit $$status

# No incremental state for the suite: a run builds each crate once, and the
# incremental caches would double target/'s size on disk.
test-suite: export CARGO_INCREMENTAL := 0
test-suite:
	$(CARGO) build --workspace --bins
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
	$(CARGO) bench -q -p sextant-agent --bench p4b_policy
	$(CARGO) bench -q -p sextant-webhook --bench p5_webhook
	$(CARGO) bench -q -p sextant-scheduler-ext --bench p6_filter
	$(CARGO) bench -q -p sextant-observer --bench p8s_flow_store
	$(CARGO) build --release -q -p sextant-operator -p sextant-webhook -p sextant-scheduler-ext --bins
	$(CARGO) bench -q -p sextant-e2e --bench p9_kwok

# A real control plane on loopback with Sextant on the simulated cloud, for a
# person: prints the kubeconfig and what to look at. `make cluster-down` stops it.
cluster: setup
	$(CARGO) build -q -p sextant-operator -p sextant-webhook -p sextant-scheduler-ext -p sextant-e2e --bins
	@bash scripts/cluster.sh up

cluster-down:
	@bash scripts/cluster.sh down

lab: setup
	$(CARGO) build --release -q -p sextant-agent -p sextant-lab --bins
	$(CARGO) build --release -q -p sextantctl
	./target/release/sextantctl lab

crds:
	$(CARGO) run -q -p sextant-crds --bin crdgen

# docs/configuration.md from charts/sextant/values.schema.json and values.yaml.
docs:
	SEXTANT_BLESS=1 $(CARGO) test -q -p sextant-e2e --test config_reference config_reference

# Every image the chart runs: one Dockerfile target each, tagged as the chart names it.
IMAGE_REPOSITORY ?= ghcr.io/sextant
IMAGE_TAG ?= $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$$/\1/p' charts/sextant/Chart.yaml)
IMAGES := $(shell sed -n 's/^FROM debian:bookworm-slim AS \(sextant-[a-z-]*\)$$/\1/p' Dockerfile)
images:
	for image in $(IMAGES); do \
		docker build --target $$image -t $(IMAGE_REPOSITORY)/$$image:$(IMAGE_TAG) . || exit 1; \
	done

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
