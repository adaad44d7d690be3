# Shell helpers around fake_apiserver.py for tests (source it; needs bash, openssl, python3, curl).
#   kube_fake_start DIR [fake_apiserver args...]
#       makes DIR/ca.{crt,key} (test CA), DIR/server.{crt,key} (CN/SAN localhost, 127.0.0.1, ::1),
#       DIR/other-ca.crt (an unrelated CA, for "wrong CA" tests), DIR/client.{crt,key} (a client
#       certificate signed by the CA), DIR/token (the bearer token), starts the server on 127.0.0.1
#       and writes DIR/kubeconfig (YAML, CA file + tokenFile). Exports KUBE_FAKE_DIR, KUBE_FAKE_URL,
#       KUBE_FAKE_PID.
#   kube_fake_ctl METHOD PATH [JSON]    a control request (see fake_apiserver.py), prints the answer
#   kube_fake_stop                      stops the server (safe to call twice; use it in a trap)
KUBE_FAKE_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

kube_fake_start() {
    local dir=$1
    shift
    mkdir -p "$dir"
    (
        cd "$dir"
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 \
            -subj "/CN=kmesh-test-ca" 2>/dev/null
        openssl req -x509 -newkey rsa:2048 -nodes -keyout other-ca.key -out other-ca.crt -days 2 \
            -subj "/CN=kmesh-other-ca" 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr \
            -subj "/CN=localhost" 2>/dev/null
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nextendedKeyUsage=serverAuth\n' >server.ext
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt \
            -days 2 -extfile server.ext 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr \
            -subj "/CN=kmesh-test-client" 2>/dev/null
        printf 'extendedKeyUsage=clientAuth\n' >client.ext
        openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out client.crt \
            -days 2 -extfile client.ext 2>/dev/null
        head -c 24 /dev/urandom | base64 | tr -d '/+=' >token
        chmod 600 token ca.key server.key client.key other-ca.key
    ) || return 1
    rm -f "$dir/port"
    python3 "$KUBE_FAKE_LIB_DIR/fake_apiserver.py" --cert "$dir/server.crt" --key "$dir/server.key" \
        --token-file "$dir/token" --port-file "$dir/port" "$@" >"$dir/server.log" 2>&1 &
    KUBE_FAKE_PID=$!
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -s $dir/port ]] && break
        if ! kill -0 "$KUBE_FAKE_PID" 2>/dev/null; then
            echo "fake apiserver failed to start:" >&2
            cat "$dir/server.log" >&2
            return 1
        fi
        sleep 0.05
    done
    [[ -s $dir/port ]] || { echo "fake apiserver did not write its port" >&2; return 1; }
    KUBE_FAKE_DIR=$dir
    KUBE_FAKE_URL="https://127.0.0.1:$(cat "$dir/port")"
    export KUBE_FAKE_DIR KUBE_FAKE_URL KUBE_FAKE_PID
    cat >"$dir/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: $KUBE_FAKE_URL
    certificate-authority: ca.crt
users:
- name: fake-user
  user:
    tokenFile: token
contexts:
- name: fake
  context:
    cluster: fake
    user: fake-user
current-context: fake
KC
}

kube_fake_ctl() {
    local method=$1 path=$2 body=${3:-}
    curl -sS --cacert "$KUBE_FAKE_DIR/ca.crt" -X "$method" -H 'Content-Type: application/json' \
        ${body:+--data-binary "$body"} "$KUBE_FAKE_URL/_control/${path#/}"
}

kube_fake_stop() {
    if [[ -n ${KUBE_FAKE_PID:-} ]]; then
        kill "$KUBE_FAKE_PID" 2>/dev/null || true
        wait "$KUBE_FAKE_PID" 2>/dev/null || true
        KUBE_FAKE_PID=
    fi
}
