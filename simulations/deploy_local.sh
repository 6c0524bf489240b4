#!/usr/bin/env bash
# Flower Deployment Engine on loopback: one SuperLink, N SuperNodes, `flwr run` of this app.
#
#   simulations/deploy_local.sh [N] [extra run-config pairs ...]
#   e.g. simulations/deploy_local.sh 2 "distill.iterations=20" "server-epochs=50"
#
# Everything is insecure and bound to 127.0.0.1 only; ports are distinct and derived from
# FEDCOND_BASE_PORT (default: a random base in 20000-39999). Flower state lives in
# $FEDCOND_DEPLOY_DIR (default runs/deploy-local): FLWR_HOME, logs, and result/metrics.json.
# Runtime dependency installation is disabled (the venv's torch is used as is).
# On exit (success, error, Ctrl-C) it stops exactly the process groups it started.
set -euo pipefail

N="${1:-2}"
shift || true
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

PIDS=()
cleanup() {
    local status=$?
    for pid in "${PIDS[@]}"; do
        # each child was started with setsid: its process group is its own tree
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    done
    sleep 1
    for pid in "${PIDS[@]}"; do
        kill -KILL -- "-$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    exit "$status"
}
trap cleanup EXIT INT TERM

echo "deploy_local: SuperLink on 127.0.0.1:$LINK_PORT, $N SuperNodes, state in $OUT"
setsid flower-superlink --insecure --isolation subprocess \
    --host 127.0.0.1 --port "$LINK_PORT" \
    --database "$OUT/superlink-state.db" \
    --disable-runtime-dependency-installation \
    >"$OUT/logs/superlink.log" 2>&1 &
PIDS+=("$!")

for _ in $(seq 1 120); do
    if python - "$LINK_PORT" <<'PY' 2>/dev/null; then break; fi
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=0.5)
PY
    sleep 0.5
done

for i in $(seq 0 $((N - 1))); do
    setsid flower-supernode --insecure --isolation subprocess \
        --superlink "127.0.0.1:$LINK_PORT" \
        --host 127.0.0.1 --port "$((LINK_PORT + 1 + i))" \
        --node-config "partition-id=$i num-partitions=$N" \
        >"$OUT/logs/supernode-$i.log" 2>&1 &
    PIDS+=("$!")
done

cat >"$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "deploy-local"

[superlink.deploy-local]
address = "127.0.0.1:$LINK_PORT"
insecure = true
TOML

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
