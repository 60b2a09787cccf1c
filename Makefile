# Two commands set everything up on a fresh Debian machine (root, package registries only):
#   make demo   runs the main job end to end on the embedded defaults
#   make test   runs the whole test suite
# Both install what they need first (scripts/install-deps.sh).

SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all deps build test demo bench lint fmt clean

all: build

deps:
	@scripts/install-deps.sh

build: deps
	$(CARGO) build --workspace --bins

## make test: every unit, integration and end-to-end test of the workspace.
test: deps
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --all-targets

## make demo: builds a real bundle ISO from local fixtures (registry + file server on
## 127.0.0.1), verifies it and shows what is in it.
demo: deps
	$(CARGO) build --release -p cks-isobuilder -p cks-e2e --bins
	target/release/cks-demo --isobuilder target/release/cks-isobuilder --out out/demo

## make bench: ISO size and build-time ratios, side by side in one run.
bench: deps
	$(CARGO) build --release -p cks-isobuilder -p cks-e2e --bins
	target/release/cks-bench --isobuilder target/release/cks-isobuilder

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf out
