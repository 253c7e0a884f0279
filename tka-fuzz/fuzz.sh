#!/usr/bin/env bash
# Runs the fuzz targets of tka-fuzz under libFuzzer, each for a bounded time.
#
#   tka-fuzz/fuzz.sh SECONDS [TARGET...]      (all targets when none is named)
#
# Needs the nightly toolchain (`rustup toolchain install nightly`). Installs cargo-fuzz once
# into the tka cache (tools/bin) and builds the harness there (fuzz-target/), so a second run
# only fuzzes. Inputs the fuzzer finds go to fuzz-corpus/<target>/ in the cache, never into the
# checked-in seeds; an input that breaks a property is saved under fuzz-corpus/artifacts/ and
# the run fails, naming it: copy it into tka-fuzz/seeds/<target>/ as a regression test.
#
# Overrides: TKA_CACHE_DIR (default ${XDG_CACHE_HOME:-~/.cache}/tka), FUZZ_TARGET_DIR,
# FUZZ_CORPUS_DIR, FUZZ_MAX_LEN (default 8192 bytes), CARGO_FUZZ_VERSION.
set -euo pipefail

seconds=${1:?usage: tka-fuzz/fuzz.sh SECONDS [TARGET...]}
shift
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
cache=${TKA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tka}
tools=$cache/tools
target_dir=${FUZZ_TARGET_DIR:-$cache/fuzz-target}
corpus_root=${FUZZ_CORPUS_DIR:-$cache/fuzz-corpus}
max_len=${FUZZ_MAX_LEN:-8192}
cargo_fuzz_version=${CARGO_FUZZ_VERSION:-0.13.2}

if [ $# -gt 0 ]; then
	targets=("$@")
else
	mapfile -t targets < <(ls "$here/seeds")
fi

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
	echo "fuzz: the nightly toolchain is missing; install it with: rustup toolchain install nightly --profile minimal" >&2
	exit 1
fi

export PATH="$tools/bin:$PATH"
if ! cargo fuzz --version 2>/dev/null | grep -q "$cargo_fuzz_version"; then
	echo "fuzz: installing cargo-fuzz $cargo_fuzz_version into $tools (once)"
	env -u CARGO_TARGET_DIR cargo install cargo-fuzz --locked --version "$cargo_fuzz_version" --root "$tools" --quiet
fi

# The harness is fuzzed with the workspace's dependency versions: its lock file starts as a
# copy of the workspace's whenever that changes (cargo then adds libFuzzer's crates).
mkdir -p "$target_dir"
stamp="$target_dir/workspace-lock.sha256"
lock_sum=$(sha256sum "$root/Cargo.lock" | cut -d' ' -f1)
if [ ! -f "$here/fuzz/Cargo.lock" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$lock_sum" ]; then
	cp "$root/Cargo.lock" "$here/fuzz/Cargo.lock"
	echo "$lock_sum" >"$stamp"
fi

(cd "$here" && env -u CARGO_TARGET_DIR cargo +nightly fuzz build --fuzz-dir fuzz --sanitizer none \
	--target-dir "$target_dir" tka)
host=$(rustc +nightly -vV | sed -n 's/^host: //p')
bin="$target_dir/$host/release/tka"

failed=()
for target in "${targets[@]}"; do
	if [ ! -d "$here/seeds/$target" ]; then
		echo "fuzz: no target $target (targets: $(ls "$here/seeds" | tr '\n' ' '))" >&2
		exit 2
	fi
	corpus="$corpus_root/$target"
	artifacts="$corpus_root/artifacts/$target"
	log="$corpus_root/$target.log"
	scratch="$corpus_root/tmp"
	rm -rf "$scratch"
	mkdir -p "$corpus" "$artifacts" "$scratch"
	# TMPDIR: the `localapi` target's fake daemon socket, removed with the next run.
	if TMPDIR=$scratch TKA_FUZZ_TARGET=$target "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 \
		-max_len="$max_len" -print_final_stats=1 -artifact_prefix="$artifacts/" \
		"$corpus" "$here/seeds/$target" >"$log" 2>&1; then
		runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
		echo "fuzz $target: ${runs:-?} inputs in ${seconds}s, no property broken ($(ls "$corpus" | wc -l) in the corpus)"
	else
		echo "fuzz $target: FAILED; the end of its log ($log):" >&2
		tail -n 40 "$log" >&2
		echo "fuzz $target: the input is under $artifacts; copy it into tka-fuzz/seeds/$target/ and fix" >&2
		failed+=("$target")
	fi
done
if [ ${#failed[@]} -gt 0 ]; then
	echo "fuzz: properties broken in: ${failed[*]}" >&2
	exit 1
fi
