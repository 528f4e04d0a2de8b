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
# Extra arguments go to cargo test instead of --workspace (e.g. scripts/test.sh --test e2e,
# or -p cnnd-core) and skip that step.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$CNND_REPO"
CNND_DATA_DIR="$(scripts/setup.sh)"
export CNND_DATA_DIR
if [ $# -gt 0 ]; then
  cargo test --release --locked "$@"
  exit 0
fi
cargo test --release --locked --workspace
if [ "$(id -u)" = 0 ]; then
  cargo test --release --locked --test faults -- --ignored mount_
  cargo test --release --locked --test remote_workers -- --ignored netns_
  scripts/slurm-cluster.sh start
  cargo test --release --locked --test slurm_launcher -- --ignored slurm_
else
  echo "test.sh: SKIPPED the mount_ tests of tests/faults.rs, the netns_ tests of tests/remote_workers.rs and the slurm_ tests of tests/slurm_launcher.rs (they need root)" >&2
fi
