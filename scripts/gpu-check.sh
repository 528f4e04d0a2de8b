#!/usr/bin/env bash
# GPU check, for a machine with an NVIDIA GPU and PyTorch 2.11 (python3) but no Rust: runs
# binaries built elsewhere against torch 2.11 with LD_LIBRARY_PATH pointing at that machine's
# torch/lib. Shows:
#   1. `cnnd-worker probe` / `cnnctl status` listing the GPU(s) libtorch sees;
#   2. a `device: cuda` sweep training on it, two CUDA workers sharing one device
#      (--gpu-workers-per-device 2), with nvidia-smi showing both processes;
#   3. the trainer bench on the GPU: full-MNIST epochs of the seed model (dense and GAP heads)
#      at batch 256, ours against bench/torch_reference.py on the same GPU, interleaved;
#      the second epoch of each run is compared (the first warms up cuDNN).
#
# Usage: CNND_DATA_DIR=DIR [GPU_BIN=DIR] [OUT=DIR] scripts/gpu-check.sh
#   DIR/mnist holds the IDX files; GPU_BIN holds cnnd, cnnd-worker, cnnctl and trainer (the trainer bench
#   binary), as scripts/gpu-pack.sh leaves them (default: target/release and the newest
#   target/release/deps/trainer-*); results land in OUT (default: target/gpu-check).
set -uo pipefail  # no -e: a failed part is reported and the next one still runs
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
TORCH_LIB="$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"
data="${CNND_DATA_DIR:?set CNND_DATA_DIR to a folder holding mnist/}"
bin="${GPU_BIN:-target/release}"
trainer="${GPU_BIN:+$GPU_BIN/trainer}"
if [ -z "$trainer" ]; then  # the newest trainer bench binary
  for f in target/release/deps/trainer-*; do
    case "$f" in *.d) continue ;; esac
    if [ -z "$trainer" ] || [ "$f" -nt "$trainer" ]; then trainer="$f"; fi
  done
fi
out="${OUT:-target/gpu-check}"
mkdir -p "$out"
state="$(mktemp -d)"
port=50777
export CNND_ADDR="http://127.0.0.1:$port" CNND_TOKEN_FILE="$state/token"
echo "== python: $(python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0))')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$bin/cnnd" --version
"$bin/cnnd-worker" --version
"$bin/cnnd-worker" probe

echo "== 1. daemon with two CUDA workers on cuda:0"
"$bin/cnnd" --listen 127.0.0.1:$port --state-dir "$state" --data-dir "$data" \
  --cpu-workers 0 --gpu-workers-per-device 2 2> "$state/cnnd.log" &
daemon=$!
trap 'kill $daemon 2>/dev/null || true; cp "$state/cnnd.log" "$out/" 2>/dev/null || true' EXIT
for _ in $(seq 100); do "$bin/cnnctl" status >/dev/null 2>&1 && break; sleep 0.3; done
"$bin/cnnctl" status
echo "== 2. a cuda sweep on two workers sharing cuda:0"
cat > "$state/cuda.json" <<JSON
{"name": "gpu-check", "dataset": "mnist", "device": "cuda",
 "space": {"head": ["dense", "gap"]},
 "fixed": {"epochs": 2, "batchSize": 256, "kernelSize": 3, "dropout": 0.5}}
JSON
sweep=$("$bin/cnnctl" --output json submit "$state/cuda.json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["sweepId"])')
sleep 8
echo "== nvidia-smi while training (two cnnd worker processes expected)"
nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv || true
"$bin/cnnctl" status
timeout 240 "$bin/cnnctl" watch "$sweep" || echo "== watch failed or timed out"
"$bin/cnnctl" sweep "$sweep"
for t in 0 1; do
  "$bin/cnnctl" --output json trial "$sweep-t$t" | python3 -c 'import json,sys; t=json.load(sys.stdin); print(t["trialId"], t["device"], t["status"], "img/s per epoch:", [round(e["imagesPerSecond"]) for e in t["epochs"]], "test acc", t["testAccuracy"])'
done
kill $daemon 2>/dev/null || true

echo "== 3. trainer bench on the GPU: ours vs PyTorch, batch 256, seed model"
CNND_PYTHON="$(command -v python3)" "$trainer" --device cuda --threads 1 --heads dense,gap --kernels 3 \
  --batch-size 256 --epochs 2 --rounds "${ROUNDS:-3}" --data-dir "$data"
cp target/bench/trainer.json "$out/trainer-gpu.json" || echo "== no trainer.json"
