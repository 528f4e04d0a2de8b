#!/usr/bin/env bash
# GPU check, for a machine with an NVIDIA GPU and PyTorch 2.11 (python3) but no Rust: runs
# binaries built elsewhere against torch 2.11 (target/release/cnnd, cnnctl), with
# LD_LIBRARY_PATH pointing at that machine's torch/lib. Shows:
#   1. `cnnctl status` listing the GPU(s) libtorch sees;
#   2. a `device: cuda` sweep training on it, two CUDA workers sharing one device
#      (--gpu-workers-per-device 2), with nvidia-smi showing both processes;
#   3. one full-MNIST epoch of the seed model at batch 256 through cnnd next to
#      bench/torch_reference.py on the same GPU.
# Usage: CNND_DATA_DIR=DIR scripts/gpu-check.sh   (DIR/mnist holds the IDX files)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TORCH_LIB="$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"
data="${CNND_DATA_DIR:?set CNND_DATA_DIR to a folder holding mnist/}"
state="$(mktemp -d)"
port=50777
export CNND_ADDR="http://127.0.0.1:$port"
echo "== python: $(python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0))')"
nvidia-smi --query-gpu=name,memory.total --format=csv
target/release/cnnd --version
target/release/cnnd probe
target/release/cnnd --listen 127.0.0.1:$port --state-dir "$state" --data-dir "$data" \
  --cpu-workers 0 --gpu-workers-per-device 2 2> "$state/cnnd.log" &
daemon=$!
trap 'kill $daemon 2>/dev/null || true; tail -n 30 "$state/cnnd.log"' EXIT
for _ in $(seq 100); do target/release/cnnctl status >/dev/null 2>&1 && break; sleep 0.3; done
echo "== cnnctl status"
target/release/cnnctl status
echo "== a cuda sweep on two workers sharing cuda:0"
cat > "$state/cuda.json" <<JSON
{"name": "gpu-check", "dataset": "mnist", "device": "cuda",
 "space": {"head": ["dense", "gap"]},
 "fixed": {"epochs": 2, "batchSize": 256, "kernelSize": 3, "dropout": 0.5}}
JSON
sweep=$(target/release/cnnctl --output json submit "$state/cuda.json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["sweepId"])')
sleep 6
echo "== nvidia-smi while training (two cnnd worker processes expected)"
nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv || true
target/release/cnnctl status
target/release/cnnctl watch "$sweep"
target/release/cnnctl sweep "$sweep"
for t in 0 1; do target/release/cnnctl --output json trial "$sweep-t$t" | python3 -c 'import json,sys; t=json.load(sys.stdin); print(t["trialId"], t["device"], t["status"], "img/s per epoch:", [round(e["imagesPerSecond"]) for e in t["epochs"]], "test acc", t["testAccuracy"])'; done
echo "== one epoch, seed model (dense head), batch 256: PyTorch on the same GPU"
python3 bench/torch_reference.py --data-dir "$data" --device cuda --batch-size 256 --epochs 2 --threads 1 || true
