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
source scripts/daemon.sh
start_daemon "$state" "${CNND_DEMO_PORT:-50051}" "$data_dir"
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
