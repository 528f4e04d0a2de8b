# shellcheck shell=bash
# Sourced by scripts that drive a daemon of their own (demo.sh, asha-vs-grid.sh), after
# env.sh: start_daemon STATE PORT DATA_DIR starts target/release/cnnd on a fresh STATE
# directory (log in STATE/cnnd.log), points cnnctl at it (CNND_ADDR, CNND_TOKEN_FILE), stops it when the
# script exits, and returns once it answers.
start_daemon() {
  local state="$1" port="$2" data_dir="$3"
  export CNND_ADDR="http://127.0.0.1:$port"
  export CNND_TOKEN_FILE="$state/token"
  rm -rf "$state"; mkdir -p "$state"
  target/release/cnnd --listen "127.0.0.1:$port" --state-dir "$state" --data-dir "$data_dir" 2> "$state/cnnd.log" &
  CNND_DAEMON_PID=$!
  trap 'kill $CNND_DAEMON_PID 2>/dev/null; wait $CNND_DAEMON_PID 2>/dev/null || true' EXIT
  for _ in $(seq 100); do target/release/cnnctl status >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "cnnd did not come up on port $port; see $state/cnnd.log" >&2
  return 1
}
