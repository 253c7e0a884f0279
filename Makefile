# tka: `make test` runs everything CI runs; `make demo` tells the story on loopback.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

CACHE_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/tka
# One target directory outside the checkout, so a fresh clone (what CI uses) reuses the
# dependencies built before it.
export CARGO_TARGET_DIR ?= $(CACHE_DIR)/target
export CARGO_TERM_COLOR ?= never
export RUST_BACKTRACE ?= 1

CARGO ?= cargo

.PHONY: test fmt-check clippy unit doc examples fmt

test: fmt-check clippy unit doc examples
	@echo "make test: all checks passed"

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit:
	$(CARGO) test --workspace --locked

doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc -p tka-core --all-features --no-deps --locked

examples:
	@for ex in $$(ls examples/examples 2>/dev/null | sed -n 's/\.rs$$//p'); do \
		echo "== example $$ex"; \
		$(CARGO) run --locked -q -p tka-examples --example $$ex; \
	done

fmt:
	$(CARGO) fmt --all
