#!/usr/bin/env bash
# Interop check: a Python grpcio client (client.py) against the real
# `abacus serve` on a free loopback port. Exits with the client's code.
#
#   bash tests/interop/run.sh
#
# Installs the pinned Python packages (requirements.txt) only when missing.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"

if ! "$python" - "$here/requirements.txt" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if line:
        name, want = line.split("==")
        if version(name) != want:
            sys.exit(1)
PY
then
    echo "interop: installing $(grep -v '^#' "$here/requirements.txt" | tr '\n' ' ')"
    "$python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
fi

cd "$root"
cargo build --quiet --bin abacus
bin="${CARGO_TARGET_DIR:-$root/target}/debug/abacus"

logs=()
servers=()
cleanup() {
    for pid in "${servers[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${servers[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -f "${logs[@]}"
}
trap cleanup EXIT

# Starts `abacus serve --addr 127.0.0.1:0 "$@"` and sets $addr and $log. The
# server logs its bound address right after binding; wait for that line
# (bounded: 300 x 0.1 s), failing early if the server died.
start_server() {
    log="$(mktemp)"
    logs+=("$log")
    NO_COLOR=1 RUST_LOG=info "$bin" serve --addr 127.0.0.1:0 "$@" 2>"$log" &
    local pid=$!
    servers+=("$pid")
    addr=""
    for _ in $(seq 300); do
        addr="$(sed -n 's/.*listening.*addr=\([0-9.]*:[0-9]*\).*/\1/p' "$log" | head -n1)"
        [ -n "$addr" ] && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "interop: abacus serve $* never logged its address:"
    cat "$log"
    exit 1
}

# Negative control: against a server that refuses everything, the client
# must report mismatches (not crash) and exit 1. Its output is kept out of
# the way.
start_server --fail-rate 1
control=0
"$python" "$here/client.py" "$addr" >"$log.control" 2>&1 || control=$?
if [ "$control" -ne 1 ] || ! grep -Eq '^[0-9]+ passed, [1-9][0-9]* failed$' "$log.control"; then
    echo "interop: FAILED: client.py should report failures against a --fail-rate 1 server (exit $control):"
    cat "$log.control"
    rm -f "$log.control"
    exit 1
fi
rm -f "$log.control"
echo "interop: negative control ok (client.py fails against --fail-rate 1)"

# Runs client.py against the server last started; on failure prints its
# log and exits.
run_client() {
    local what="$1"
    shift
    local status=0
    "$python" "$here/client.py" "$addr" "$@" || status=$?
    if [ "$status" -ne 0 ]; then
        echo "interop: FAILED $what (exit $status); server log:"
        cat "$log"
        exit "$status"
    fi
    echo "interop: $what ok"
}

start_server
echo "interop: abacus serve on $addr"
run_client "plaintext"

# TLS, mutual TLS and tokens, with throwaway certificates (rcgen; nothing
# committed): tests/support/certs.rs through the tls_certs example.
certs="$(mktemp -d)"
trap 'cleanup; rm -rf "$certs"' EXIT
cargo run --quiet --example tls_certs -- "$certs" >/dev/null
printf 'py write interop-token-0123456789abcdef\n' >"$certs/tokens"
printf 'interop-token-0123456789abcdef\n' >"$certs/token"

start_server --tls-cert "$certs/server.pem" --tls-key "$certs/server.key"
run_client "TLS" --tls-ca "$certs/ca.pem"

start_server --tls-cert "$certs/server.pem" --tls-key "$certs/server.key" \
    --tls-client-ca "$certs/ca.pem" --auth-tokens "$certs/tokens"
run_client "mutual TLS with a token" --tls-ca "$certs/ca.pem" \
    --tls-cert "$certs/client.pem" --tls-key "$certs/client.key" --token-file "$certs/token"

# Negative controls: the mutual-TLS server refuses a client without a
# certificate (at the handshake: client.py exits 2, UNAVAILABLE), and one
# without a token (its calls: exit 1, UNAUTHENTICATED mismatches). Each must
# fail for its own reason, not for any other (a crash, a timeout).
for control in "no client certificate" "no token"; do
    case "$control" in
        "no client certificate")
            extra=(--token-file "$certs/token")
            want_status=2
            want='^cannot reach the server: UNAVAILABLE: '
            ;;
        *)
            extra=(--tls-cert "$certs/client.pem" --tls-key "$certs/client.key")
            want_status=1
            want='^FAIL .*UNAUTHENTICATED'
            ;;
    esac
    status=0
    timeout 120 "$python" "$here/client.py" "$addr" --tls-ca "$certs/ca.pem" "${extra[@]}" \
        >"$log.control" 2>&1 || status=$?
    if [ "$status" -ne "$want_status" ] || ! grep -Eq "$want" "$log.control"; then
        echo "interop: FAILED: with $control, client.py should exit $want_status with a line matching '$want' (exit $status):"
        cat "$log.control"
        exit 1
    fi
    echo "interop: negative control ok ($control: refused)"
done
rm -f "$log.control"
echo "interop: all runs ok"
