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

.PHONY: test fmt-check clippy modcycles unit doc examples fmt testenv e2e demo bench bench-exec bench-bins book image fuzz fuzz-smoke

# The real components for the end-to-end tests (built once into the user's cache; < 1 s when
# cached, about 20 minutes cold). See tka-testkit/testenv/README.md.
TESTENV_BUILD := tka-testkit/testenv/build.sh

test: fmt-check clippy modcycles testenv book image unit doc examples
	@echo "make test: all checks passed"

testenv:
	$(TESTENV_BUILD) >/dev/null


fmt-check:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path tka-fuzz/fuzz/Cargo.toml -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# No module import cycle inside any crate of the workspace (rule and allowlist: tools/modcycles).
modcycles:
	$(CARGO) run --locked -q -p modcycles -- $(CURDIR)

# Every test, the end-to-end ones included: they find the components through TKA_TESTENV_BIN
# and fail (instead of skipping) because TKA_REQUIRE_TESTENV=1.
# The book's link check reads the built book (TKA_BOOK_HTML) and the image test runs the built
# image (TKA_IMAGE); both fail instead of skipping when they are missing.
unit: testenv
	eval "$$($(TESTENV_BUILD) 2>/dev/null)"; \
	export TKA_REQUIRE_TESTENV=1; \
	export TKA_BOOK_HTML="$(BOOK_OUT)" TKA_REQUIRE_BOOK=1; \
	export TKA_IMAGE="$(IMAGE_OUT)" TKA_REQUIRE_IMAGE=1; \
	$(CARGO) test --workspace --locked

# Only the end-to-end tests.
e2e: testenv
	eval "$$($(TESTENV_BUILD) 2>/dev/null)"; \
	export TKA_REQUIRE_TESTENV=1; \
	$(CARGO) test --locked -p tka-testkit --test it e2e::

# The bounded soak (docs/testing.md): 50 devices churning logins, refreshes, proxied requests
# and watches, logouts and expiries on the real components for SOAK_SECONDS, then no leaked
# object or stream, no unexpected error, RSS growth under 10 %. `make test` runs it for 30 s.
SOAK_SECONDS ?= 300
.PHONY: soak
soak: testenv
	eval "$$($(TESTENV_BUILD) 2>/dev/null)"; \
	export TKA_REQUIRE_TESTENV=1 TKA_SOAK_SECONDS=$(SOAK_SECONDS); \
	$(CARGO) test --locked -p tka-server --test it e2e_soak:: -- --nocapture

# The story on loopback: a real control plane and tailnet, the built tka-server and tka CLI;
# bounded and self-cleaning.
demo: testenv
	$(CARGO) build --locked -q -p tka-server -p tka-cli
	eval "$$($(TESTENV_BUILD) 2>/dev/null)"; \
	TKA_SERVER_BIN="$(CARGO_TARGET_DIR)/debug/tka-server" TKA_BIN="$(CARGO_TARGET_DIR)/debug/tka" \
	$(CARGO) run --locked -q -p tka-testkit --example demo

# The book (book.toml, docs/SUMMARY.md) rendered with mdBook into $(BOOK_OUT), offline. mdBook
# is installed once from crates.io into $(TOOLS_DIR) (without its `serve` and `watch` features,
# which pull in a web server and a file watcher the build does not need; its own temporary build
# directory). Its links are checked by `tka-server --test it book::` under `make unit`.
MDBOOK_VERSION := 0.5.4
TOOLS_DIR := $(CACHE_DIR)/tools
MDBOOK := $(TOOLS_DIR)/bin/mdbook
BOOK_OUT ?= $(CACHE_DIR)/book

book:
	@if [ "$$("$(MDBOOK)" --version 2>/dev/null)" != "mdbook v$(MDBOOK_VERSION)" ]; then \
		echo "installing mdbook $(MDBOOK_VERSION) into $(TOOLS_DIR)"; \
		env -u CARGO_TARGET_DIR nice -n 5 $(CARGO) install --locked --quiet mdbook \
			--no-default-features --features search \
			--version $(MDBOOK_VERSION) --root "$(TOOLS_DIR)"; \
	fi
	"$(MDBOOK)" build --dest-dir "$(BOOK_OUT)" "$(CURDIR)" 2>&1 | { grep -v ' INFO ' || true; }

# The server image as an OCI image tarball (a static musl tka-server on an empty base, user
# 65532, the machine's CA bundle), built without a container engine by
# tka-server/image/build.sh; rewritten only when the binary changed. See docs/operations.md.
IMAGE_OUT ?= $(CACHE_DIR)/image/tka-server.tar

image:
	IMAGE_OUT="$(IMAGE_OUT)" CARGO="$(CARGO)" tka-server/image/build.sh >/dev/null

doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc -p tka-core --all-features --no-deps --locked

examples:
	@for ex in $$(ls examples/examples 2>/dev/null | sed -n 's/\.rs$$//p'); do \
		echo "== example $$ex"; \
		$(CARGO) run --locked -q -p tka-examples --example $$ex; \
	done

fmt:
	$(CARGO) fmt --all
	$(CARGO) fmt --manifest-path tka-fuzz/fuzz/Cargo.toml

# Fuzzing with libFuzzer (nightly; tka-fuzz/fuzz.sh installs cargo-fuzz into $(CACHE_DIR)/tools
# and builds into $(CACHE_DIR)/fuzz-target): every target for FUZZ_SECONDS (FUZZ_TARGETS picks
# some); `make fuzz-smoke` runs FUZZ_SMOKE_SECONDS of each. Not in `make test`, whose `unit` step
# replays the checked-in inputs (tka-fuzz/seeds) as regression tests and then a stable mutation
# smoke of every target (tka-fuzz/tests/corpus.rs). See docs/testing.md.
FUZZ_SECONDS ?= 60
FUZZ_SMOKE_SECONDS ?= 3
FUZZ_TARGETS ?=

fuzz:
	TKA_CACHE_DIR="$(CACHE_DIR)" tka-fuzz/fuzz.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz-smoke:
	TKA_CACHE_DIR="$(CACHE_DIR)" tka-fuzz/fuzz.sh $(FUZZ_SMOKE_SECONDS)

# Benchmark results (not part of `make test`).
BENCH_OUT ?= $(CACHE_DIR)/bench
EXEC_BENCH_FLAGS ?= --runs 500 --warmup 20 --seconds 240 --logins 30

# Every binary docs/benchmarks.md runs as $T/… (T=$(CARGO_TARGET_DIR)/release): tka-server, tka
# and each of benches/src/bin. `make test` runs those commands at their smallest sizes on the
# debug builds `cargo test` makes (tka-benches' tests/it).
bench-bins:
	nice -n 10 $(CARGO) build --locked --release -p tka-server -p tka-cli -p tka-benches --bins

# kubectl's exec plugins timed as whole processes, interleaved in one run: `tka credential` on a
# cache hit and on a refresh from the built tka-server over a real tailnet, beside
# gke-gcloud-auth-plugin serving from its cache (skipped with EXEC_BENCH_FLAGS=--no-gke when it
# is not installed), then `tka login` wall times on the laptop node (--logins). Release builds; the run itself is bounded (--seconds, and 10 minutes in
# all). Writes $(BENCH_OUT)/exec-plugin.{md,json}. See docs/benchmarks.md.
bench-exec: testenv
	nice -n 10 $(CARGO) build --locked --release -q -p tka-cli -p tka-server
	nice -n 10 $(CARGO) build --locked --release -q -p tka-benches --bin exec_plugin
	mkdir -p "$(BENCH_OUT)"
	eval "$$($(TESTENV_BUILD) 2>/dev/null)"; \
	timeout 600 "$(CARGO_TARGET_DIR)/release/exec_plugin" $(EXEC_BENCH_FLAGS) \
		--json "$(BENCH_OUT)/exec-plugin.json" | tee "$(BENCH_OUT)/exec-plugin.md"

# Every benchmark; not part of `make test` (which compiles them, through clippy --all-targets,
# and runs each command of docs/benchmarks.md that writes nothing into BENCH_OUT at its
# smallest size, through tka-benches' test): the divan micro-benchmarks, the scale run on the real components
# (benches/src/bin/scale.rs: the release tka-server with deploy/'s RBAC on the testenv's API
# server; numbers, Markdown and SVG plots), the proxy run (benches/src/bin/proxy.rs: the same
# stage with --proxy-listen; added latency, throughput, memory per watch, logout → streams
# closed) and bench-exec. Bounded: about 14 minutes on 2 cores with these counts (the scale run
# is killed after 10 minutes, the proxy run after 4). docs/benchmarks.md gives the counts its
# numbers used, e.g. SCALE_ARGS="--sessions 10000 --mid-sessions 1000 --expiring 1000
# --spread-seconds 60 --idle-seconds 20" (about 20 minutes for the scale run alone).
# The server's log during the scale run (server.log in $(BENCH_OUT)): the reconciler's per-pass
# timings at debug, everything else at warn.
SCALE_LOG_FILTER ?= warn,tka_core::kubernetes::reconciler=debug
SCALE_ARGS ?= --sessions 2000 --mid-sessions 500 --logins 50 --expiring 300 --spread-seconds 30 --idle-seconds 15
PROXY_ARGS ?= --rounds 300 --concurrency 8 --slices 5 --slice-seconds 3 --watches 1000 --logout-rounds 10 --logout-watches 20

bench: testenv
	mkdir -p "$(BENCH_OUT)"
	nice -n 10 $(CARGO) bench --locked -p tka-benches --bench core 2>&1 | tee "$(BENCH_OUT)/core.txt"
	nice -n 10 $(CARGO) build --locked --release -q -p tka-server
	nice -n 10 $(CARGO) build --locked --release -q -p tka-benches --bin scale --bin proxy
	eval "$$($(TESTENV_BUILD) 2>/dev/null)"; \
	timeout 600 "$(CARGO_TARGET_DIR)/release/scale" \
		--server-bin "$(CARGO_TARGET_DIR)/release/tka-server" --out "$(BENCH_OUT)" $(SCALE_ARGS) \
		--server-log-filter "$(SCALE_LOG_FILTER)"
	eval "$$($(TESTENV_BUILD) 2>/dev/null)"; \
	timeout 240 "$(CARGO_TARGET_DIR)/release/proxy" \
		--server-bin "$(CARGO_TARGET_DIR)/release/tka-server" --out "$(BENCH_OUT)" $(PROXY_ARGS)
	$(MAKE) bench-exec
	@echo "make bench: results in $(BENCH_OUT)"

