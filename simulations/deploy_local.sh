#!/usr/bin/env bash
# Flower Deployment Engine on loopback: one SuperLink, N SuperNodes, `flwr run` of this app.
#
#   simulations/deploy_local.sh [--secure] [N] [extra run-config pairs ...]
#   e.g. simulations/deploy_local.sh 2 "distill.iterations=20" "server-epochs=50"
#        simulations/deploy_local.sh --secure 2 "distill.iterations=20"
#
# Without --secure everything is insecure (plain HTTP, any SuperNode may join). With --secure it
# makes a throwaway CA, a SuperLink certificate for 127.0.0.1/localhost and one key pair per
# SuperNode in $FEDCOND_DEPLOY_DIR/certs (simulations/make_credentials.py; private keys mode 600,
# the folder is remade at each start), starts the SuperLink with TLS and SuperNode
# authentication, registers every node's public key through the Control API (`flwr supernode
# register`), starts the SuperNodes with the CA certificate and their private keys, and runs the
# app over TLS. docs/deployment.md does the same across machines.
# Both modes bind 127.0.0.1 only; ports are distinct and derived from FEDCOND_BASE_PORT (default:
# a random base in 20000-39999). Flower state lives in $FEDCOND_DEPLOY_DIR (default
# runs/deploy-local): FLWR_HOME, logs, certs, and result/metrics.json. FEDCOND_DEPLOY_TIMEOUT
# (default 600 s) bounds `flwr run`. FEDCOND_CLIENT_POLICY=FILE gives every SuperNode that client
# policy (node config `policy`, checked with `fedcond policy FILE` first; docs/client-policy.md). Runtime dependency installation is disabled (the venv's
# torch is used as is).
# On exit (success, error, Ctrl-C) it stops exactly the process groups it started.
set -euo pipefail

SECURE=0
if [[ "${1:-}" == "--secure" ]]; then
    SECURE=1
    shift
fi
N="${1:-2}"
shift || true
if ! [[ "$N" =~ ^[1-9][0-9]*$ ]]; then
    echo "deploy_local: N must be a positive number of SuperNodes, got '$N'" >&2
    echo "usage: simulations/deploy_local.sh [--secure] [N] [key=value ...]" >&2
    exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(mkdir -p "${FEDCOND_DEPLOY_DIR:-$ROOT/runs/deploy-local}" && cd "${FEDCOND_DEPLOY_DIR:-$ROOT/runs/deploy-local}" && pwd)"
BASE_PORT="${FEDCOND_BASE_PORT:-$((20000 + RANDOM % 20000))}"
LINK_PORT="$BASE_PORT"
TIMEOUT="${FEDCOND_DEPLOY_TIMEOUT:-600}"

export FLWR_HOME="$OUT/flwr-home"
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export FLWR_DISABLE_UPDATE_CHECK=1
mkdir -p "$FLWR_HOME" "$OUT/logs"
rm -f "$OUT/result/metrics.json" "$OUT"/superlink-state.db*

CERTS="$OUT/certs"
if ((SECURE)); then
    rm -rf "$CERTS"
    python "$ROOT/simulations/make_credentials.py" --out "$CERTS" --nodes "$N" \
        --host 127.0.0.1 --host localhost --days 1 >/dev/null
    LINK_SECURITY=(--ssl-ca-certfile "$CERTS/ca.crt" --ssl-certfile "$CERTS/server.pem"
                   --ssl-keyfile "$CERTS/server.key" --enable-supernode-auth)
    SCHEME=https
    CA_FILE="$CERTS/ca.crt"
    MODE="TLS + SuperNode authentication"
else
    LINK_SECURITY=(--insecure)
    SCHEME=http
    CA_FILE=""
    MODE="insecure"
fi

PIDS=()
descendants() {
    # every process below the given PIDs, found by parent PID: Flower starts its SuperExec in a
    # session of its own, out of reach of a process-group kill
    local frontier=("$@") next pid child
    while ((${#frontier[@]})); do
        next=()
        for pid in "${frontier[@]}"; do
            while read -r child; do next+=("$child"); done < <(pgrep -P "$pid" || true)
        done
        ((${#next[@]})) && echo "${next[@]}"
        frontier=("${next[@]}")
    done
}
cleanup() {
    local status=$?
    local tree=() pid
    set +e  # best effort from here: a process that is already gone is not an error
    # shellcheck disable=SC2207 # PIDs are plain numbers
    tree=($(descendants "${PIDS[@]}"))
    for pid in "${PIDS[@]}"; do
        # each child was started with setsid: its process group is its own tree
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${tree[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    sleep 1
    for pid in "${PIDS[@]}"; do
        kill -KILL -- "-$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    for pid in "${tree[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 20); do  # until init has reaped the detached ones (at most 2 s)
        local alive=0
        for pid in "${tree[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    exit "$status"
}
trap cleanup EXIT INT TERM

echo "deploy_local: SuperLink on 127.0.0.1:$LINK_PORT ($MODE), $N SuperNodes, state in $OUT"
setsid flower-superlink "${LINK_SECURITY[@]}" --isolation subprocess \
    --host 127.0.0.1 --port "$LINK_PORT" \
    --database "$OUT/superlink-state.db" \
    --disable-runtime-dependency-installation \
    >"$OUT/logs/superlink.log" 2>&1 &
PIDS+=("$!")

healthy=0
for _ in $(seq 1 120); do
    if python - "$SCHEME://127.0.0.1:$LINK_PORT/health" "$CA_FILE" <<'PY' 2>/dev/null; then
import ssl, sys, urllib.request
context = ssl.create_default_context(cafile=sys.argv[2]) if sys.argv[2] else None
urllib.request.urlopen(sys.argv[1], timeout=0.5, context=context)
PY
        healthy=1
        break
    fi
    sleep 0.5
done
if ((!healthy)); then
    echo "deploy_local: the SuperLink did not answer on 127.0.0.1:$LINK_PORT (see $OUT/logs/superlink.log)" >&2
    exit 1
fi

# the connection `flwr run` and `flwr supernode register` use; a TLS connection names the CA
# certificate that signed the SuperLink's certificate
{
    echo '[superlink]'
    echo 'default = "deploy-local"'
    echo
    echo '[superlink.deploy-local]'
    echo "address = \"127.0.0.1:$LINK_PORT\""
    if ((SECURE)); then
        echo "root-certificates = \"$CA_FILE\""
    else
        echo 'insecure = true'
    fi
} >"$FLWR_HOME/config.toml"

# every SuperNode's client policy (docs/client-policy.md): FEDCOND_CLIENT_POLICY names a TOML file
NODE_POLICY=""
if [[ -n "${FEDCOND_CLIENT_POLICY:-}" ]]; then
    if [[ ! -f "$FEDCOND_CLIENT_POLICY" ]]; then
        echo "deploy_local: FEDCOND_CLIENT_POLICY=$FEDCOND_CLIENT_POLICY is not a file" >&2
        exit 2
    fi
    NODE_POLICY=" policy='$(cd "$(dirname "$FEDCOND_CLIENT_POLICY")" && pwd)/$(basename "$FEDCOND_CLIENT_POLICY")'"
    # a bad policy is one clear error before any SuperNode starts, not a refusal at the first round
    fedcond policy "$FEDCOND_CLIENT_POLICY" >"$OUT/logs/policy-check.log" || {
        echo "deploy_local: FEDCOND_CLIENT_POLICY=$FEDCOND_CLIENT_POLICY is not a valid client policy" >&2
        exit 2
    }
fi

for i in $(seq 0 $((N - 1))); do
    NODE_SECURITY=(--insecure)
    if ((SECURE)); then
        # with authentication on, only SuperNodes whose public key is registered get a node id
        if ! flwr supernode register "$CERTS/supernode-$i.pub" deploy-local \
            >"$OUT/logs/register-$i.log" 2>&1; then
            echo "deploy_local: registering supernode-$i failed (see $OUT/logs/register-$i.log)" >&2
            exit 1
        fi
        NODE_SECURITY=(--root-certificates "$CA_FILE" --auth-supernode-private-key "$CERTS/supernode-$i.key")
    fi
    setsid flower-supernode "${NODE_SECURITY[@]}" --isolation subprocess \
        --superlink "127.0.0.1:$LINK_PORT" \
        --host 127.0.0.1 --port "$((LINK_PORT + 1 + i))" \
        --node-config "partition-id=$i num-partitions=$N$NODE_POLICY" \
        >"$OUT/logs/supernode-$i.log" 2>&1 &
    PIDS+=("$!")
done

RUN_CONFIG="num-clients=$N min-available-nodes=$N out=\"$OUT/result\""
for pair in "$@"; do RUN_CONFIG="$RUN_CONFIG $pair"; done

cd "$ROOT"
timeout "$TIMEOUT" flwr run . deploy-local --run-config "$RUN_CONFIG" --stream | tee "$OUT/logs/flwr-run.log"

if [[ -f "$OUT/result/metrics.json" ]]; then
    echo "deploy_local: done, $OUT/result/metrics.json"
else
    echo "deploy_local: the run ended without $OUT/result/metrics.json (see $OUT/logs)" >&2
    exit 1
fi
