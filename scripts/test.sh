#!/usr/bin/env bash
# Runs the whole test suite: sets up (scripts/setup.sh: libtorch, grpcurl, MNIST, the build of
# all three binaries), then `cargo test --release --workspace` with CNND_DATA_DIR pointing at
# MNIST and grpcurl on PATH: the daemon's end-to-end tests (tests/), the trainer's
# (crates/cnnd-worker), core's property tests and every crate's unit tests.
# The tests that mount file systems (tests/faults.rs, mount_*) and those that run workers
# in network namespaces (tests/remote_workers.rs, netns_*) and the Slurm launcher's (tests/
# slurm_launcher.rs, slurm_*, against the one-node cluster scripts/slurm-cluster.sh installs
# and starts) need root: they are ignored by a plain `cargo test`, and run here in a second
# step when this runs as root (as CI does);
# otherwise the script says they were skipped.
# Everything is built and tested with cnnd's `kubernetes` feature, so the Kubernetes launcher's
# tests (tests/kubernetes_launcher.rs, against a scripted API server, and the manifests
# against the Kubernetes schema: scripts/validate-manifests.sh, run first, installs its
# validator) run too; setup.sh builds with the same features, so nothing is built twice.
# The PostgreSQL store's tests (tests/store_state_machine.rs, store_copy.rs, faults.rs) start
# their own throw-away servers with scripts/postgres.sh (installed here when missing, as root).
# Extra arguments go to cargo test instead of --workspace (e.g. scripts/test.sh --test e2e,
# or -p cnnd-core) and skip that step.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$CNND_REPO"
export CNND_BUILD_FEATURES="cnnd/kubernetes"
features=(--features "$CNND_BUILD_FEATURES")
CNND_DATA_DIR="$(scripts/setup.sh)"
export CNND_DATA_DIR
# env.sh looked for libtorch before setup.sh installed it: on a new machine (an empty cache)
# LIBTORCH was still empty then, and cargo test would rebuild torch-sys without it.
LIBTORCH="$(cnnd_find_libtorch)"
[ -n "$LIBTORCH" ] || { echo "test.sh: setup.sh finished but no libtorch is in $CNND_VENV" >&2; exit 1; }
export LIBTORCH
scripts/validate-manifests.sh
# The PostgreSQL store's tests start throw-away servers (scripts/postgres.sh): make sure the
# server binaries are there (Debian's postgresql-15 on these machines).
if [ "$(id -u)" = 0 ]; then scripts/postgres.sh install; fi
# The dashboard's browser test drives headless Chromium (installed here when missing, as root).
scripts/chromium.sh
if [ $# -gt 0 ]; then
  cargo test --release --locked "${features[@]}" "$@"
  exit 0
fi
cargo test --release --locked "${features[@]}" --workspace
if [ "$(id -u)" = 0 ]; then
  cargo test --release --locked "${features[@]}" --test faults -- --ignored mount_
  cargo test --release --locked "${features[@]}" --test remote_workers -- --ignored netns_
  scripts/slurm-cluster.sh start
  cargo test --release --locked "${features[@]}" --test slurm_launcher -- --ignored slurm_
else
  echo "test.sh: SKIPPED the mount_ tests of tests/faults.rs, the netns_ tests of tests/remote_workers.rs and the slurm_ tests of tests/slurm_launcher.rs (they need root)" >&2
fi
