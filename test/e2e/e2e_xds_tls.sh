#!/usr/bin/env bash
# The istiod connection as production makes it: TLS verified against the mesh root CA, and the
# service-account token as "authorization: Bearer", re-read on reconnect. A throwaway CA is made
# with openssl. Usage: e2e_xds_tls.sh <build-dir>
source "$(dirname "$0")/lib.sh"
e2e_init "${1:?usage: $0 <build-dir>}"

PKI=$TMP/pki
mkdir -p "$PKI"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/O=kmesh-e2e/CN=root" \
    -keyout "$PKI/ca.key" -out "$PKI/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=istiod" -keyout "$PKI/istiod.key" -out "$PKI/istiod.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:istiod.istio-system.svc\n' >"$PKI/san.ext"
openssl x509 -req -in "$PKI/istiod.csr" -CA "$PKI/ca.pem" -CAkey "$PKI/ca.key" -CAcreateserial -days 1 \
    -extfile "$PKI/san.ext" -out "$PKI/istiod.pem" 2>/dev/null
# A different CA, which must not be trusted.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/O=other/CN=root" \
    -keyout "$PKI/other.key" -out "$PKI/other.pem" 2>/dev/null

TOKEN=tok-$RANDOM$RANDOM$RANDOM
(umask 077 && printf '%s\n' "$TOKEN" >"$PKI/token")
PORT=$(free_port)
CONTROL=$TMP/istiod
mkdir -p "$CONTROL"
SVC=default/echo.default.svc.cluster.local

python3 "$E2E_DIR/../xds/make_fixture.py" --service "$SVC=10.96.0.10:80:8080" >"$TMP/snapshot.json"
istiod_start "$PORT" "$CONTROL" "$TMP/snapshot.json" --tls-cert "$PKI/istiod.pem" --tls-key "$PKI/istiod.key" \
    --expect-token-file "$PKI/token"

# Wrong CA first: the agent must refuse istiod's certificate and keep the maps as they are.
agent_start --xds-address "127.0.0.1:$PORT" --root-cert "$PKI/other.pem" --token-file "$PKI/token" --node-name n1
wait_log "xds: stream to 127.0.0.1:$PORT ended" 1
check "an istiod certificate from another CA is refused" test "$(grep -c '"event":"connect"' "$CONTROL/events.jsonl" 2>/dev/null || true)" = 0
agent_stop

# Wrong token: istiod refuses the stream.
(umask 077 && echo wrong >"$TMP/wrong-token")
agent_start --xds-address "127.0.0.1:$PORT" --root-cert "$PKI/ca.pem" --token-file "$TMP/wrong-token" --node-name n1
wait_log "xds: stream to 127.0.0.1:$PORT ended" 2
check "a wrong token is refused by istiod" grep -q '"event":"unauthenticated"' "$CONTROL/events.jsonl"
agent_stop

# The pods (kmesh-cni needs the programs the agents above pinned) and their workload in istiod.
pod_create client
pod_create backend
pod_serve backend backend 8080
python3 "$E2E_DIR/../xds/make_fixture.py" --service "$SVC=10.96.0.10:80:8080" \
    --workload "uid=Kubernetes//Pod/default/backend,ip=$POD_IP4,services=$SVC" -o "$CONTROL/snapshot.json"
touch "$CONTROL/push"

agent_start --xds-address "127.0.0.1:$PORT" --root-cert "$PKI/ca.pem" --token-file "$PKI/token" --node-name n1 \
    --cluster-id cluster-7
wait_log "config generation 1 applied: 1 services, 1 workloads" 1
check "with the mesh CA and the token, the agent connects" grep -q '"matched":true' "$CONTROL/events.jsonl"
check "and sends the clusterid header" grep -q '"clusterid":"cluster-7"' "$CONTROL/events.jsonl"
out=$(pod_connect client 10.96.0.10 80 5)
check "traffic follows istiod's state over TLS" test "$(sort -u <<<"$out")" = backend
check "the token never appears in the agent's log" eval '! grep -q "$TOKEN" "$TMP/agent.log"'
check "the token file is private (0600)" test "$(stat -c %a "$PKI/token")" = 600
