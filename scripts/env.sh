# shellcheck shell=bash
# shellcheck disable=SC2034 # CNND_PY, CNND_MNIST_SHA256 ...: set here for the sourcing scripts
# Sourced by the other scripts: where the cached toolchain pieces live, and how to find data.
# CNND_CACHE (default ~/.cache/cnnd) holds the PyTorch virtual environment that provides
# libtorch 2.11 and grpcurl, shared by every clone on the machine; .venv in the clone links to it.
# Beside it, a small torchvision environment that borrows that torch install (a .pth file)
# instead of bringing its own, so the shared torch is never upgraded nor downloaded twice.
#
# Everything here must work on a machine that has never seen the project (no cache yet):
# the sourcing scripts run under `set -euo pipefail`, where any failing command or pipeline
# ends them. scripts/check-fresh.sh (run by CI) sources this file with an empty cache.

# A script that stops on an error says where and why (set -e alone exits without a word).
set -E
cnnd_on_error() {
  local status="$1" file="$2" line="$3" command="$4"
  echo "${file##*/}: line $line: '$command' failed (exit $status)" >&2
}
trap 'cnnd_on_error $? "${BASH_SOURCE[0]:-$0}" "$LINENO" "$BASH_COMMAND"' ERR

CNND_CACHE="${CNND_CACHE:-$HOME/.cache/cnnd}"
CNND_TORCH_VERSION="2.11.0"
CNND_VENV="$CNND_CACHE/venv-torch-$CNND_TORCH_VERSION"
CNND_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CNND_PY="$CNND_VENV/bin/python"
# torchvision (paired with torch 2.11) for the pretrained backbones' reference and weight
# conversion scripts (bench/torchvision_export.py, scripts/convert-torchvision-weights.py);
# setup.sh creates it. Exported: the worker's backbone test reads CNND_TORCHVISION_PY.
CNND_TORCHVISION_VERSION="0.26.0"
CNND_TORCHVISION_VENV="$CNND_CACHE/venv-torchvision-$CNND_TORCHVISION_VERSION"
CNND_TORCHVISION_PY="$CNND_TORCHVISION_VENV/bin/python"
export CNND_TORCHVISION_VERSION CNND_TORCHVISION_VENV CNND_TORCHVISION_PY
# The torch package folder (include/ and lib/) inside the cached environment; empty until
# setup.sh has installed it. A glob, not `ls | head`: on a new machine the folder does not exist
# yet and this file is sourced under `set -euo pipefail`, where a failing pipeline would end the
# sourcing script without a word.
cnnd_find_libtorch() {
  local d
  for d in "$CNND_VENV"/lib/python3*/site-packages/torch; do
    if [ -d "$d/lib" ]; then printf '%s\n' "$d"; return 0; fi
  done
  return 0
}
LIBTORCH="$(cnnd_find_libtorch)"
export LIBTORCH
export LIBTORCH_BYPASS_VERSION_CHECK=1
export PATH="$CNND_REPO/target/release:$CNND_VENV/bin:$PATH"

# Decompressed sha256 of the four standard MNIST IDX files.
CNND_MNIST_SHA256="
train-images-idx3-ubyte ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db
train-labels-idx1-ubyte 65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5
t10k-images-idx3-ubyte 0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7
t10k-labels-idx1-ubyte ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"

# True when DIR/mnist (or DIR itself) holds all four MNIST files, gzip or not.
cnnd_has_mnist() {
  local dir="$1" f
  for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    [ -e "$dir/mnist/$f.gz" ] || [ -e "$dir/mnist/$f" ] || [ -e "$dir/$f.gz" ] || [ -e "$dir/$f" ] || return 1
  done
}

# Prints the data directory to use: $CNND_DATA_DIR, else the team's shared data beside the
# clone (../shared/data), else the cache (where setup.sh downloads MNIST). Empty when none.
cnnd_data_dir() {
  local d
  for d in "${CNND_DATA_DIR:-}" "$CNND_REPO/../shared/data" "$CNND_CACHE/data"; do
    if [ -n "$d" ] && cnnd_has_mnist "$d"; then (cd "$d" && pwd); return 0; fi
  done
  return 1
}
