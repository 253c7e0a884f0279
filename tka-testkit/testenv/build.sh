#!/usr/bin/env bash
# Builds the real components for end-to-end tests and caches them outside
# the checkout:
#
#   ${XDG_CACHE_HOME:-$HOME/.cache}/tka/testenv/<key>/bin/
#     etcd kube-apiserver kube-controller-manager kubectl      (module ./kube)
#     fake-upstream                                             (module ./kube, ./cmd/fake-upstream)
#     tailscaled tailscale tailnet-harness                      (module ./tailnet)
#
# <key> hashes the go.mod/go.sum files, the harness and fake-upstream sources, `go version`
# and the build flags. When every binary is already there this does nothing.
# A build goes to a temporary directory that is renamed into place on
# success. The last lines printed (and ${cache}/tka/testenv/env) are
#
#   TKA_TESTENV_BIN=/…/bin
#   export TKA_TESTENV_BIN
#
# so that `eval "$(tka-testkit/testenv/build.sh)"` works.
#
# Environment: GO (the go command), TKA_TESTENV_NICE (default 10; empty
# disables nice), TKA_TESTENV_FORCE=1 (rebuild even if cached),
# TKA_TESTENV_KEEP (how many builds to keep in the cache, default 3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [ -n "${GO:-}" ]; then
  go="$GO"
elif command -v go >/dev/null 2>&1; then
  go="$(command -v go)"
elif [ -x /usr/local/go/bin/go ]; then
  go=/usr/local/go/bin/go
else
  echo "build.sh: no go command found (set GO=/path/to/go)" >&2
  exit 1
fi

# Bump when the way the binaries are built changes.
recipe=2
export CGO_ENABLED=0
export GOTOOLCHAIN=local
export GOFLAGS="-mod=readonly -buildvcs=false"
# The module proxy is used as configured on the machine (GOPROXY).

nice_cmd=()
nice_level="${TKA_TESTENV_NICE-10}"
if [ -n "$nice_level" ] && command -v nice >/dev/null 2>&1; then
  nice_cmd=(nice -n "$nice_level")
fi

gomod_version() { # module path, from the go.mod in $2
  awk -v m="$1" '$1==m && $2 ~ /^v/ {print $2; exit} $1=="require" && $2==m {print $3; exit}' "$2"
}
k8s_version="$(gomod_version k8s.io/kubernetes "$here/kube/go.mod")"
ts_version="$(gomod_version tailscale.com "$here/tailnet/go.mod")"
k8s_minor="${k8s_version#v1.}"; k8s_minor="${k8s_minor%%.*}"

kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X ${pkg}.gitVersion=${k8s_version}"
  kube_ldflags+=" -X ${pkg}.gitMajor=1"
  kube_ldflags+=" -X ${pkg}.gitMinor=${k8s_minor}"
  kube_ldflags+=" -X ${pkg}.gitTreeState=clean"
done
ts_ldflags="-s -w"
ts_ldflags+=" -X tailscale.com/version.longStamp=${ts_version#v}"
ts_ldflags+=" -X tailscale.com/version.shortStamp=${ts_version#v}"
build_flags=(-trimpath)

binaries=(etcd kube-apiserver kube-controller-manager kubectl fake-upstream tailscaled tailscale tailnet-harness)

go_version="$("$go" version)"
key="$(
  {
    echo "recipe=$recipe"
    echo "$go_version"
    "$go" env GOOS GOARCH
    echo "CGO_ENABLED=$CGO_ENABLED GOFLAGS=$GOFLAGS"
    echo "flags=${build_flags[*]}"
    echo "kube_ldflags=$kube_ldflags"
    echo "ts_ldflags=$ts_ldflags"
    for f in kube/go.mod kube/go.sum kube/tools.go tailnet/go.mod tailnet/go.sum tailnet/tools.go; do
      echo "== $f"; cat "$here/$f"
    done
    for m in kube tailnet; do
      (cd "$here/$m" && find cmd -type f -name '*.go' ! -name '*_test.go' | LC_ALL=C sort | while read -r f; do
        echo "== $m/$f"; cat "$f"
      done)
    done
  } | sha256sum | cut -c1-16
)"

cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/tka/testenv"
dest="$cache_root/$key"
bin="$dest/bin"
mkdir -p "$cache_root"

have_all() {
  local b
  for b in "${binaries[@]}"; do
    [ -x "$bin/$b" ] || return 1
  done
}

print_env() {
  local envfile="$cache_root/env"
  printf 'TKA_TESTENV_BIN=%s\nexport TKA_TESTENV_BIN\n' "$bin" > "$envfile.tmp.$$"
  mv -f "$envfile.tmp.$$" "$envfile"
  cat "$envfile"
}

if [ "${TKA_TESTENV_FORCE:-}" != 1 ] && have_all; then
  echo "build.sh: cached: $bin" >&2
  print_env
  exit 0
fi

# One build at a time per cache (another one may finish ours meanwhile).
lock="$cache_root/.lock"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$lock"
  flock 9
  if [ "${TKA_TESTENV_FORCE:-}" != 1 ] && have_all; then
    echo "build.sh: cached (built concurrently): $bin" >&2
    print_env
    exit 0
  fi
fi

tmp="$(mktemp -d "$cache_root/.build-XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"
mkdir -p "$tmp/bin"

start=$(date +%s)
echo "build.sh: building into $tmp (key $key, $go_version)" >&2

echo "build.sh: kube-apiserver kube-controller-manager kubectl fake-upstream (k8s.io/kubernetes $k8s_version)" >&2
(cd "$here/kube" && "${nice_cmd[@]}" "$go" build "${build_flags[@]}" -ldflags="$kube_ldflags" -o "$tmp/bin/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kubectl \
  ./cmd/fake-upstream)

echo "build.sh: etcd ($(gomod_version go.etcd.io/etcd/server/v3 "$here/kube/go.mod"))" >&2
(cd "$here/kube" && "${nice_cmd[@]}" "$go" build "${build_flags[@]}" -ldflags="-s -w" -o "$tmp/bin/etcd" \
  go.etcd.io/etcd/server/v3)

echo "build.sh: tailscaled tailscale tailnet-harness (tailscale.com $ts_version)" >&2
(cd "$here/tailnet" && "${nice_cmd[@]}" "$go" build "${build_flags[@]}" -ldflags="$ts_ldflags" -o "$tmp/bin/" \
  tailscale.com/cmd/tailscaled \
  tailscale.com/cmd/tailscale \
  ./cmd/tailnet-harness)

for b in "${binaries[@]}"; do
  [ -x "$tmp/bin/$b" ] || { echo "build.sh: $b was not built" >&2; exit 1; }
done

rm -rf "$dest.old"
if [ -e "$dest" ]; then
  mv "$dest" "$dest.old"
fi
mv "$tmp" "$dest"
trap - EXIT
rm -rf "$dest.old"
echo "build.sh: built in $(( $(date +%s) - start ))s: $bin" >&2

# Keep the newest few builds (other checkouts or branches may use them);
# each one is about 350 MB.
keep="${TKA_TESTENV_KEEP:-3}"
# shellcheck disable=SC2012
ls -1dt "$cache_root"/*/ 2>/dev/null | tail -n +"$((keep + 1))" | while read -r old; do
  old="${old%/}"
  [ "$old" = "$dest" ] && continue
  [ -d "$old/bin" ] || continue
  echo "build.sh: removing old build $old" >&2
  rm -rf "$old"
done
print_env
