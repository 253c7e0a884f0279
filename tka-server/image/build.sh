#!/usr/bin/env bash
# Builds the tka-server container image without a container engine and writes it as an OCI
# image tarball (an OCI image layout in a tar, as `podman save --format oci-archive` writes):
#
#   ${XDG_CACHE_HOME:-$HOME/.cache}/tka/image/tka-server.tar     (IMAGE_OUT to change)
#
# The image is one layer on an empty base:
#   /usr/local/bin/tka-server           static (musl) release build, mode 0755
#   /etc/ssl/certs/ca-certificates.crt  this machine's CA bundle (CA_BUNDLE to change)
#   /etc/passwd, /etc/group             root and nonroot (65532), for tools that look names up
#   /tmp                                1777 (the Deployment mounts a volume there)
# and its config: Entrypoint ["/usr/local/bin/tka-server"], Cmd ["serve"], User 65532:65532,
# platform linux/amd64.
#
# Tools: go-containerregistry's `crane` (built once with `go install` from the Go module proxy
# into ${cache}/tools/bin) assembles the image through a registry it serves on loopback for the
# duration of the build; the musl target is added with rustup when missing. Nothing is pushed
# anywhere else.
#
# Cached: the tarball is rewritten only when the binary, the CA bundle or this script changed
# (a stamp beside the tarball holds their hashes); cargo decides whether the binary is rebuilt.
# Environment: CARGO, CARGO_TARGET_DIR, IMAGE_OUT, CA_BUNDLE, TKA_IMAGE_NICE (default 5).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/tka"
tools="$cache/tools/bin"
out="${IMAGE_OUT:-$cache/image/tka-server.tar}"
ca_bundle="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
target=x86_64-unknown-linux-musl
crane_version=v0.22.1
cargo="${CARGO:-cargo}"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
nice_cmd=(nice -n "${TKA_IMAGE_NICE:-5}")

say() { echo "image: $*" >&2; }

go="$(command -v go || echo /usr/local/go/bin/go)"
crane="$tools/crane"
if [ "$("$crane" version 2>/dev/null || true)" != "$crane_version" ]; then
  say "building crane $crane_version into $tools"
  GOBIN="$tools" GOTOOLCHAIN=local CGO_ENABLED=0 "${nice_cmd[@]}" "$go" install \
    "github.com/google/go-containerregistry/cmd/crane@$crane_version"
fi

if ! rustup target list --installed | grep -qx "$target"; then
  say "adding the Rust target $target"
  rustup target add "$target"
fi

# ring compiles a little C. Without a musl cross compiler, the host's C compiler builds it: its
# C is freestanding (no libc headers), and rustc links with musl's own self-contained objects.
if [ -z "${CC_x86_64_unknown_linux_musl:-}" ] && ! command -v x86_64-linux-musl-gcc >/dev/null; then
  if command -v musl-gcc >/dev/null; then
    export CC_x86_64_unknown_linux_musl=musl-gcc
  else
    export CC_x86_64_unknown_linux_musl=cc
  fi
fi

(cd "$root" && "${nice_cmd[@]}" "$cargo" build --release --locked -q -p tka-server --target "$target")
bin="$target_dir/$target/release/tka-server"

# A static executable has no program interpreter (no dynamic loader to find on an empty base).
if readelf -l "$bin" | grep -q 'INTERP'; then
  say "$bin is dynamically linked; the image needs a static binary"
  exit 1
fi
[ -r "$ca_bundle" ] || { say "no CA bundle at $ca_bundle (set CA_BUNDLE)"; exit 1; }

stamp="$(cat "$bin" "$ca_bundle" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
if [ -f "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$stamp" ]; then
  say "$out is up to date"
  echo "$out"
  exit 0
fi

work="$(mktemp -d)"
registry_pid=""
cleanup() {
  if [ -n "$registry_pid" ]; then kill "$registry_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

rootfs="$work/rootfs"
install -D -m 0755 "$bin" "$rootfs/usr/local/bin/tka-server"
install -D -m 0644 "$ca_bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
  > "$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$rootfs/etc/group"
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group"
mkdir -p "$rootfs/tmp" && chmod 1777 "$rootfs/tmp"
# Reproducible layer: sorted, owned by root, no timestamps.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "$rootfs" -cf "$work/layer.tar" .

"$crane" registry serve --address 127.0.0.1:0 > "$work/registry.log" 2>&1 &
registry_pid=$!
port=""
for _ in $(seq 1 100); do
  port="$(sed -n 's/.*serving on port \([0-9]*\).*/\1/p' "$work/registry.log")"
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || { say "crane's loopback registry did not start: $(cat "$work/registry.log")"; exit 1; }
ref="127.0.0.1:$port/tka-server:build"

"$crane" append --oci-empty-base -f "$work/layer.tar" -t "$ref" >/dev/null 2>"$work/crane.log" \
  || { cat "$work/crane.log" >&2; exit 1; }
"$crane" mutate "$ref" \
  --entrypoint /usr/local/bin/tka-server --cmd serve --user 65532:65532 --workdir / \
  --exposed-ports 9090/tcp --set-platform linux/amd64 \
  -l org.opencontainers.image.title=tka-server \
  -l org.opencontainers.image.source=https://github.com/tka-dev/tka \
  -l "org.opencontainers.image.version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)" \
  -t "$ref" >/dev/null 2>"$work/crane.log" || { cat "$work/crane.log" >&2; exit 1; }
"$crane" pull --format oci "$ref" "$work/oci" 2>"$work/crane.log" || { cat "$work/crane.log" >&2; exit 1; }

mkdir -p "$(dirname "$out")"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work/oci" -cf "$out.tmp" .

# The tarball pushed the way docs/operations.md says (unpacked, `crane push` of the layout) must
# arrive as the same image.
pushed="$work/pushed"
mkdir -p "$pushed"
tar -xf "$out.tmp" -C "$pushed"
"$crane" push "$pushed" "127.0.0.1:$port/tka-server:pushed" >/dev/null 2>"$work/crane.log" \
  || { cat "$work/crane.log" >&2; exit 1; }
digest="$("$crane" digest "$ref")"
if [ "$("$crane" digest "127.0.0.1:$port/tka-server:pushed")" != "$digest" ]; then
  say "the pushed tarball is not the built image"
  exit 1
fi

mv "$out.tmp" "$out"
echo "$stamp" > "$out.stamp"
say "wrote $out ($(du -h "$out" | cut -f1)), digest $digest"
echo "$out"
