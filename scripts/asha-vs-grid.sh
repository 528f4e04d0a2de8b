#!/usr/bin/env bash
# ASHA against the full grid on full MNIST (issue 5's acceptance check): runs the 16
# configurations of examples/asha-grid.json (kernel 3/5, dropout 0/0.5, GAP/dense, 16/32
# filters; 6 epochs) once as a plain grid and once with "earlyStopping": "asha"
# (gracePeriod 1, reductionFactor 3: rungs at epochs 1 and 3; ASHA's promotion form unless
# CNND_ASHA_MODE=stop), through one daemon with its default workers, ASHA first, and prints
# for each sweep the best trial by validation accuracy (what the sweep picks) with its test
# accuracy, the best test accuracy of any trial that ran to the end, and the epochs
# trained. About 70 minutes on two cores. Charts of both sweeps (dashboards default and
# compare) are listed at the end.
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
asha_file="$state/asha.json"
CNND_ASHA_MODE="${CNND_ASHA_MODE:-promote}" "$CNND_PY" - "$asha_file" <<'PY'
import json, os, sys
s = json.load(open("examples/asha-grid.json"))
s.update(name="seed-questions-asha", earlyStopping="asha", gracePeriod=1, reductionFactor=3,
         ashaMode=os.environ["CNND_ASHA_MODE"])
json.dump(s, open(sys.argv[1], "w"))
PY
asha=$(run asha "$asha_file")
grid=$(run grid examples/asha-grid.json)

summary() { # $1: sweep id
  target/release/cnnctl --output json sweep "$1" | "$CNND_PY" -c '
import json, sys
s = json.load(sys.stdin)
t = s["trials"]
done = [x for x in t if x["status"] == "succeeded"]
v = max(done, key=lambda x: x["valAccuracy"])
b = max(done, key=lambda x: x["testAccuracy"])
epochs = sum(x["epochsDone"] for x in t)
pruned = sum(x["status"] == "pruned" for x in t)
name, vid, vval, vtest = s["name"], v["trialId"], v["valAccuracy"] * 100, v["testAccuracy"] * 100
bid, btest = b["trialId"], b["testAccuracy"] * 100
print(f"{name}: {len(done)} trials ran to the end, {pruned} pruned, {epochs} epochs trained")
print(f"  best by validation accuracy: {vid} val {vval:.2f}% test {vtest:.2f}%")
print(f"  best test accuracy of a finished trial: {bid} {btest:.2f}%")'
}
echo
summary "$asha"
summary "$grid"
for s in "$grid" "$asha"; do
  target/release/cnnctl sweep "$s" | tail -6
  target/release/cnnctl charts "$s" --dashboard compare
done
