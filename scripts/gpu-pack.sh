#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs on a GPU machine without Rust into .gpu/ (ignored
# through .git/info/exclude): stripped cnnd, cnnd-worker, cnnctl and trainer-bench binaries
# and the MNIST files. Then, with the device tool: carry [".gpu"] and run
#   GPU_BIN=.gpu CNND_DATA_DIR=.gpu/data OUT=$OUT bash scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
cargo build --release --workspace --bins
trainer="$(cargo bench --bench trainer --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "trainer" and m.get("executable"):
        print(m["executable"])')"
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/data/mnist
strip -o .gpu/cnnd target/release/cnnd
strip -o .gpu/cnnd-worker target/release/cnnd-worker
strip -o .gpu/cnnctl target/release/cnnctl
strip -o .gpu/trainer "$trainer"
cp "${CNND_DATA_DIR:-../shared/data}"/mnist/*.gz .gpu/data/mnist/
du -sh .gpu
