#!/usr/bin/env bash
# The demo: sets everything up (scripts/setup.sh), starts cnnd on a fresh state directory,
# submits a sweep of the seed notebook's three questions on full MNIST (kernel 3 or 5,
# dropout 0 or 0.5, GAP or dense head: 8 trials), follows it live and prints the best trial
# and where the charts are. SWEEP=file.json runs another sweep file instead.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$CNND_REPO"
data_dir="$(scripts/setup.sh)"
state="${CNND_DEMO_STATE:-$CNND_REPO/demo-state}"
port="${CNND_DEMO_PORT:-50051}"
export CNND_ADDR="http://127.0.0.1:$port"
rm -rf "$state"; mkdir -p "$state"
target/release/cnnd --listen "127.0.0.1:$port" --state-dir "$state" --data-dir "$data_dir" 2> "$state/cnnd.log" &
daemon=$!
trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null || true' EXIT
for _ in $(seq 100); do target/release/cnnctl status >/dev/null 2>&1 && break; sleep 0.2; done
target/release/cnnctl status
start=$(date +%s)
sweep=$(target/release/cnnctl --output json submit "${SWEEP:-examples/mnist-demo.json}" | "$CNND_PY" -c 'import json,sys; print(json.load(sys.stdin)["sweepId"])')
echo "submitted sweep $sweep; following it (daemon log: $state/cnnd.log)"
target/release/cnnctl watch "$sweep"
echo
target/release/cnnctl sweep "$sweep"
echo
echo "demo sweep took $(( $(date +%s) - start )) s; charts:"
target/release/cnnctl charts "$sweep"
