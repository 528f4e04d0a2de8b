#!/usr/bin/env bash
# ASHA against the full grid on full MNIST (issue 5's acceptance check): runs the 16
# configurations of examples/asha-grid.json (kernel 3/5, dropout 0/0.5, GAP/dense, 16/32
# filters; 6 epochs) once as a plain grid and once with "earlyStopping": "asha"
# (gracePeriod 1, reductionFactor 3: rungs at epochs 1 and 3), through one daemon with its default workers, and
# prints each sweep's best test accuracy and the epochs it trained. About 75 minutes on two
# cores. Charts of both sweeps (dashboards default and compare) are listed at the end.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$CNND_REPO"
data_dir="$(scripts/setup.sh)"
state="${CNND_ASHA_STATE:-$CNND_REPO/asha-state}"
source scripts/daemon.sh
start_daemon "$state" "${CNND_ASHA_PORT:-50061}" "$data_dir"

run() { # $1: label, $2: sweep file
  local sweep start
  start=$(date +%s)
  sweep=$(target/release/cnnctl --output json submit "$2" | "$CNND_PY" -c 'import json,sys; print(json.load(sys.stdin)["sweepId"])')
  echo "$1: sweep $sweep" >&2
  target/release/cnnctl watch "$sweep" >&2
  echo "$1 took $(( $(date +%s) - start )) s" >&2
  echo "$sweep"
}
grid=$(run grid examples/asha-grid.json)
asha_file="$state/asha.json"
"$CNND_PY" - "$asha_file" <<'PY'
import json, sys
s = json.load(open("examples/asha-grid.json"))
s.update(name="seed-questions-asha", earlyStopping="asha", gracePeriod=1, reductionFactor=3)
json.dump(s, open(sys.argv[1], "w"))
PY
asha=$(run asha "$asha_file")

summary() { # $1: sweep id
  target/release/cnnctl --output json sweep "$1" | "$CNND_PY" -c '
import json, sys
s = json.load(sys.stdin)
t = s["trials"]
best = max((x for x in t if x["status"] == "succeeded"), key=lambda x: x["testAccuracy"])
epochs = sum(x["epochsDone"] for x in t)
pruned = sum(x["status"] == "pruned" for x in t)
name, acc, tid = s["name"], best["testAccuracy"] * 100, best["trialId"]
print(f"{name}: best test accuracy {acc:.2f}% ({tid}), {epochs} epochs trained, {pruned} trials pruned")'
}
echo
summary "$grid"
summary "$asha"
for s in "$grid" "$asha"; do
  target/release/cnnctl sweep "$s" | tail -6
  target/release/cnnctl charts "$s" --dashboard compare
done
