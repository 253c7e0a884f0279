#!/usr/bin/env bash
# Starts the tailnet harness with two nodes ("cluster" tagged tag:tka, "laptop"
# owned by alice@example.com), grants laptop -> cluster the capability
# tka.dev/cap/kubernetes = {"role":"view"}, serves HTTP on 127.0.0.1:$PORT,
# fetches it from laptop through laptop's SOCKS5 proxy, and checks whois on
# cluster's LocalAPI, both by laptop's tailnet IP and by the local address of
# the re-dialled connection (the HTTP handler asks whois while the
# connection is open and returns the answer).
#   TKA_TESTENV_BIN=... smoke/tailnet.sh        (PORT=8080 by default)
set -euo pipefail
: "${TKA_TESTENV_BIN:?run build.sh first and set TKA_TESTENV_BIN}"
BIN="$TKA_TESTENV_BIN"
PORT="${PORT:-8080}"
CAP=tka.dev/cap/kubernetes

W="$(mktemp -d "${TMPDIR:-/tmp}/tka-tailnet-smoke-XXXXXX")"
hpid=""; spid=""
cleanup() {
  [ -n "$spid" ] && kill "$spid" 2>/dev/null || true
  [ -n "$hpid" ] && kill "$hpid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$BIN/tailnet-harness" \
  --node cluster=tag:tka \
  --node laptop=alice@example.com \
  --grant "{\"src\":\"laptop\",\"dst\":\"cluster\",\"caps\":{\"$CAP\":[{\"role\":\"view\"}]}}" \
  >"$W/harness.out" 2>"$W/harness.err" &
hpid=$!
for i in $(seq 1 600); do
  grep -q '"ready":true' "$W/harness.out" 2>/dev/null && break
  kill -0 "$hpid" 2>/dev/null || { cat "$W/harness.err" >&2; exit 1; }
  sleep 0.1
done
grep -q '"ready":true' "$W/harness.out" || { echo "harness not ready" >&2; cat "$W/harness.err" >&2; exit 1; }
echo "--- harness stdout"; cat "$W/harness.out"

ADMIN=$(head -1 "$W/harness.out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["admin"])')
field() { curl -fsS "http://$ADMIN/v0/nodes/$1" | python3 -c "import json,sys; print(json.load(sys.stdin)[\"$2\"])"; }
CLUSTER_IP=$(field cluster ipv4); CLUSTER_SOCK=$(field cluster socket)
LAPTOP_IP=$(field laptop ipv4); LAPTOP_SOCKS=$(field laptop socks5)

# An HTTP server on 127.0.0.1:$PORT whose answer is cluster's whois of the
# connection's remote address, asked while the connection is open.
cat > "$W/server.py" <<PY
import http.server, subprocess, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        addr = "%s:%d" % self.client_address
        out = subprocess.run(["curl", "-sS", "--unix-socket", "$CLUSTER_SOCK",
            "-H", "Host: local-tailscaled.sock",
            "http://local-tailscaled.sock/localapi/v0/whois?addr=" + addr],
            capture_output=True).stdout
        self.send_response(200)
        self.send_header("X-Remote-Addr", addr)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(out)
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", $PORT), H).serve_forever()
PY
python3 "$W/server.py" & spid=$!
sleep 0.5

echo "--- curl --socks5 $LAPTOP_SOCKS http://$CLUSTER_IP:$PORT/  (whois of the re-dialled connection)"
curl -fsS -D "$W/headers" --socks5 "$LAPTOP_SOCKS" "http://$CLUSTER_IP:$PORT/" > "$W/whois-conn.json"
grep -i x-remote-addr "$W/headers"
python3 - "$W/whois-conn.json" "$CAP" "$LAPTOP_IP" <<'PY'
import json, sys
w = json.load(open(sys.argv[1])); cap = sys.argv[2]
print("UserProfile.LoginName:", w["UserProfile"]["LoginName"], "| Node.Name:", w["Node"]["Name"], "| CapMap:", json.dumps(w["CapMap"]))
assert w["UserProfile"]["LoginName"] == "alice@example.com", w["UserProfile"]
assert w["CapMap"][cap] == [{"role": "view"}], w["CapMap"]
assert sys.argv[3] + "/32" in w["Node"]["Addresses"]
PY

echo "--- whois by laptop's tailnet IP"
curl -fsS --unix-socket "$CLUSTER_SOCK" -H 'Host: local-tailscaled.sock' \
  "http://local-tailscaled.sock/localapi/v0/whois?addr=$LAPTOP_IP" > "$W/whois-ip.json"
python3 - "$W/whois-ip.json" "$CAP" <<'PY'
import json, sys
w = json.load(open(sys.argv[1])); cap = sys.argv[2]
print("CapMap:", json.dumps(w["CapMap"]))
assert w["CapMap"][cap] == [{"role": "view"}]
PY

echo "--- whois of cluster (tagged) from laptop"
curl -fsS --unix-socket "$(field laptop socket)" -H 'Host: local-tailscaled.sock' \
  "http://local-tailscaled.sock/localapi/v0/whois?addr=$CLUSTER_IP" > "$W/whois-tagged.json"
python3 - "$W/whois-tagged.json" <<'PY'
import json, sys
w = json.load(open(sys.argv[1]))
print("Node.Tags:", w["Node"].get("Tags"), "| UserProfile.LoginName:", w["UserProfile"]["LoginName"], "| CapMap:", json.dumps(w.get("CapMap")))
assert w["Node"]["Tags"] == ["tag:tka"]
PY

echo "--- revoke: DELETE /v0/grants, whois CapMap must lose the capability"
curl -fsS -X DELETE "http://$ADMIN/v0/grants" >/dev/null
curl -fsS --unix-socket "$CLUSTER_SOCK" -H 'Host: local-tailscaled.sock' \
  "http://local-tailscaled.sock/localapi/v0/whois?addr=$LAPTOP_IP" | python3 -c '
import json,sys; w=json.load(sys.stdin); print("CapMap:", json.dumps(w["CapMap"])); assert not (w["CapMap"] or {}).get("'"$CAP"'")'

echo "tailnet smoke test: OK"
