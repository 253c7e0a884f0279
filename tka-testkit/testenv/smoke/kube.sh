#!/usr/bin/env bash
# Starts etcd, kube-apiserver and kube-controller-manager on loopback with the
# flags documented in ../README.md, checks them with kubectl, and stops them.
#   TKA_TESTENV_BIN=... smoke/kube.sh            (after build.sh)
#   KEEP=1 smoke/kube.sh                         keep running until Ctrl-C
#   LOGDIR=/tmp/logs smoke/kube.sh               keep the components' logs
set -euo pipefail
: "${TKA_TESTENV_BIN:?run build.sh first and set TKA_TESTENV_BIN}"
BIN="$TKA_TESTENV_BIN"

D="$(mktemp -d "${TMPDIR:-/tmp}/tka-kube-XXXXXX")"
pids=()
# Stop in reverse order of start: controller-manager, API server, etcd.
stop_pid() {
  local p=$1 i
  kill "$p" 2>/dev/null || return 0
  for i in $(seq 1 100); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
  echo "pid $p ignored SIGTERM for 10s; killing" >&2
  kill -9 "$p" 2>/dev/null || true
}
cleanup() {
  local i t0=$(date +%s.%N)
  for (( i=${#pids[@]}-1; i>=0; i-- )); do stop_pid "${pids[$i]}"; done
  echo "stopped in $(python3 -c "print(round($(date +%s.%N)-$t0,2))")s" >&2
  if [ -n "${LOGDIR:-}" ]; then mkdir -p "$LOGDIR" && cp "$D"/*.log "$LOGDIR"/ 2>/dev/null || true; fi
  rm -rf "$D"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ETCD_CLIENT=$(free_port); ETCD_PEER=$(free_port); API=$(free_port)

# --- PKI: a CA, the API server's serving cert, an admin client cert
# (O=system:masters), and the service-account signing key.
cd "$D"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=tka-test-ca" \
  -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout apiserver.key -out apiserver.csr 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\nextendedKeyUsage=serverAuth\n' > apiserver.ext
openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -extfile apiserver.ext -out apiserver.crt 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=admin" -keyout admin.key -out admin.csr 2>/dev/null
printf 'extendedKeyUsage=clientAuth\n' > client.ext
openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -extfile client.ext -out admin.crt 2>/dev/null
openssl genrsa -out sa.key 2048 2>/dev/null
openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
# A static bearer token for the admin too (token,user,uid,"group1,group2").
ADMIN_TOKEN="$(openssl rand -hex 16)"
echo "${ADMIN_TOKEN},admin,admin-uid,\"system:masters\"" > tokens.csv

"$BIN/etcd" \
  --name=tka-test \
  --data-dir="$D/etcd" \
  --listen-client-urls="http://127.0.0.1:$ETCD_CLIENT" \
  --advertise-client-urls="http://127.0.0.1:$ETCD_CLIENT" \
  --listen-peer-urls="http://127.0.0.1:$ETCD_PEER" \
  --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER" \
  --initial-cluster="tka-test=http://127.0.0.1:$ETCD_PEER" \
  --unsafe-no-fsync \
  --log-level=warn \
  >"$D/etcd.log" 2>&1 &
pids+=($!)
for i in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$ETCD_CLIENT/health" 2>/dev/null | grep -q '"health":"true"' && break
  sleep 0.1
done

"$BIN/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$ETCD_CLIENT" \
  --bind-address=127.0.0.1 \
  --secure-port="$API" \
  --advertise-address=127.0.0.1 \
  --tls-cert-file="$D/apiserver.crt" \
  --tls-private-key-file="$D/apiserver.key" \
  --client-ca-file="$D/ca.crt" \
  --token-auth-file="$D/tokens.csv" \
  --authorization-mode=RBAC \
  --service-account-issuer="https://127.0.0.1:$API" \
  --service-account-key-file="$D/sa.pub" \
  --service-account-signing-key-file="$D/sa.key" \
  --service-cluster-ip-range=10.0.0.0/24 \
  --allow-privileged=true \
  --enable-priority-and-fairness=false \
  >"$D/kube-apiserver.log" 2>&1 &
pids+=($!)

cat > kubeconfig <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: https://127.0.0.1:$API
    certificate-authority: $D/ca.crt
users:
- name: admin
  user:
    client-certificate: $D/admin.crt
    client-key: $D/admin.key
- name: admin-token
  user:
    token: $ADMIN_TOKEN
contexts:
- name: test
  context: {cluster: test, user: admin}
- name: test-token
  context: {cluster: test, user: admin-token}
current-context: test
KCFG
export KUBECONFIG="$D/kubeconfig"

t0=$(date +%s.%N)
for i in $(seq 1 300); do
  if "$BIN/kubectl" get --raw /readyz >/dev/null 2>&1; then break; fi
  sleep 0.1
done
"$BIN/kubectl" get --raw '/readyz' >/dev/null || { tail -50 "$D/kube-apiserver.log"; exit 1; }
echo "kube-apiserver ready after $(python3 -c "print(round($(date +%s.%N)-$t0,2))")s"

"$BIN/kube-controller-manager" \
  --kubeconfig="$D/kubeconfig" \
  --secure-port=0 \
  --controllers=clusterrole-aggregation-controller,garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller \
  --use-service-account-credentials=false \
  --service-account-private-key-file="$D/sa.key" \
  --root-ca-file="$D/ca.crt" \
  --leader-elect=false \
  >"$D/kube-controller-manager.log" 2>&1 &
pids+=($!)

"$BIN/kubectl" get ns
"$BIN/kubectl" --context=test-token auth whoami
ok=0
for i in $(seq 1 100); do
  rules=$("$BIN/kubectl" get clusterrole view -o jsonpath='{.rules}' 2>/dev/null || true)
  sa=$("$BIN/kubectl" -n default get sa default -o name 2>/dev/null || true)
  cm=$("$BIN/kubectl" -n default get cm kube-root-ca.crt -o name 2>/dev/null || true)
  if [ -n "$rules" ] && [ "$rules" != "[]" ] && [ -n "$sa" ] && [ -n "$cm" ]; then ok=1; break; fi
  sleep 0.2
done
if [ $ok != 1 ]; then
  echo "controller-manager did not aggregate roles / create default SA / publish kube-root-ca.crt" >&2
  tail -50 "$D/kube-controller-manager.log" >&2
  exit 1
fi
echo "clusterrole view has $("$BIN/kubectl" get clusterrole view -o json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["rules"]))') aggregated rules; default SA and kube-root-ca.crt exist"
"$BIN/kubectl" -n default create token default --duration=10m | cut -c1-20 | sed 's/$/… (TokenRequest works)/'
if [ "${KEEP:-}" = 1 ]; then
  echo "KUBECONFIG=$D/kubeconfig; Ctrl-C to stop"
  wait
fi
echo "kube smoke test: OK"
