#!/usr/bin/env bash
# Runs the whole test suite: sets up (scripts/setup.sh: libtorch, grpcurl, MNIST, build),
# then `cargo test --release` with CNND_DATA_DIR pointing at MNIST and grpcurl on PATH.
# Extra arguments go to cargo test (e.g. scripts/test.sh --test e2e).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$CNND_REPO"
CNND_DATA_DIR="$(scripts/setup.sh)"
export CNND_DATA_DIR
cargo test --release --locked "$@"
