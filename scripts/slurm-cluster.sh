#!/usr/bin/env bash
# Brings up (or stops, or reports on) a real one-node Slurm cluster on this machine, for the
# tests of cnnd's Slurm launcher: tests/slurm_launcher.rs, and CI (.ci/run), through
# scripts/test.sh. Needs root. Usage:
#
#   scripts/slurm-cluster.sh start    # install slurm-wlm + munge with apt if missing, write
#                                     # /etc/slurm/slurm.conf, start munged, slurmctld and
#                                     # slurmd, wait for the node, run one job to prove it works
#   scripts/slurm-cluster.sh stop     # cancel all jobs, stop the daemons this script started
#   scripts/slurm-cluster.sh status   # print what runs; exit 0 when the cluster answers
#
# `start` is idempotent: when the daemons it started are up, the config is unchanged and
# `sinfo` answers for the node, it does nothing. There is no systemd: the daemons are started
# directly, with their state, spool, logs and pid files under $CNND_SLURM_DIR
# (/var/lib/cnnd-slurm). The config goes to /etc/slurm/slurm.conf, the path the client tools
# (sbatch, squeue, scancel, sinfo) read by default, so nothing needs SLURM_CONF.
#
# The cluster: ClusterName=cnnd-test, one node named after `hostname -s` (NodeAddr=127.0.0.1)
# with max(nproc, $CNND_SLURM_MIN_CPUS=4) CPUs (more than the machine has is allowed through
# SlurmdParameters=config_overrides, so that a 2-core CI runner still runs 4 one-CPU jobs at
# once), no cgroups, no accounting, and two partitions: `debug` (the default, up) and `down`
# (State=DOWN: a job sent there stays pending forever, with reason PartitionDown).
set -Eeuo pipefail
trap 'echo "slurm-cluster.sh: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

export PATH="$PATH:/usr/sbin:/sbin"
STATE_DIR="${CNND_SLURM_DIR:-/var/lib/cnnd-slurm}"
MIN_CPUS="${CNND_SLURM_MIN_CPUS:-4}"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
MARKER="# Written by cnnd scripts/slurm-cluster.sh"
RUN_DIR="$STATE_DIR/run"
LOG_DIR="$STATE_DIR/log"
CTLD_PID="$RUN_DIR/slurmctld.pid"
SLURMD_PID="$RUN_DIR/slurmd.pid"
MUNGE_OURS="$RUN_DIR/munged.ours" # present when this script started munged
MUNGE_PID=/run/munge/munged.pid   # munged's default; the default socket is what Slurm uses

say() { echo "slurm-cluster.sh: $*" >&2; }
die() {
  say "ERROR: $*"
  exit 1
}

usage() {
  echo "usage: $0 start|stop|status" >&2
  exit 2
}

need_root() {
  [ "$(id -u)" = 0 ] || die "must run as root (it installs packages, writes /etc/slurm and starts daemons)"
}

# Pid from a pid file, when that process is alive.
live_pid() {
  local file="$1" pid
  [ -s "$file" ] || return 1
  pid="$(tr -dc '0-9' <"$file")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

node_name() {
  local n
  n="$(hostname -s 2>/dev/null || true)"
  [ -n "$n" ] || n="$(uname -n)"
  n="${n%%.*}"
  echo "$n"
}

install_packages() {
  local missing=0 cmd
  for cmd in sbatch squeue scancel sinfo scontrol slurmctld slurmd munged munge unmunge; do
    command -v "$cmd" >/dev/null 2>&1 || missing=1
  done
  [ "$missing" = 1 ] || return 0
  say "installing slurm-wlm and munge with apt-get"
  # Keep the packages' init scripts from starting daemons during the install: this script
  # starts them itself, with its own config.
  local policy=/usr/sbin/policy-rc.d ours_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    ours_policy=1
  fi
  local rc=0
  {
    DEBIAN_FRONTEND=noninteractive apt-get update -q &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurm-wlm munge
  } >&2 || rc=$?
  [ "$ours_policy" = 0 ] || rm -f "$policy"
  [ "$rc" = 0 ] || die "apt-get install slurm-wlm munge failed (exit $rc)"
}

munge_works() {
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1
}

start_munge() {
  if munge_works; then
    return 0
  fi
  id munge >/dev/null 2>&1 || die "no munge user: is the munge package installed?"
  install -d -m 0700 -o munge -g munge /etc/munge
  install -d -m 0700 -o munge -g munge /var/log/munge
  install -d -m 0711 -o munge -g munge /var/lib/munge
  install -d -m 0755 -o munge -g munge /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null 2>&1; then
      mungekey --create --force --keyfile=/etc/munge/munge.key
    else
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  # A stale pid file or socket of a dead munged makes a new one refuse to start.
  if ! live_pid "$MUNGE_PID" >/dev/null; then
    rm -f "$MUNGE_PID" /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  fi
  runuser -u munge -- munged
  touch "$MUNGE_OURS"
  local i
  for i in $(seq 1 50); do
    munge_works && return 0
    sleep 0.2
  done
  tail -n 20 /var/log/munge/munged.log >&2 || true
  die "munged started but 'munge -n | unmunge' does not work (log above)"
}

# The slurm.conf this machine should have, on stdout.
render_conf() {
  local node="$1" cpus mem_mb
  cpus="$(nproc)"
  [ "$cpus" -ge "$MIN_CPUS" ] || cpus="$MIN_CPUS"
  mem_mb="$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)"
  # A bit below the real memory (slurmd drains a node that reports less than configured).
  mem_mb=$((mem_mb * 95 / 100))
  [ "$mem_mb" -ge 1 ] || mem_mb=1
  cat <<EOF
$MARKER: a one-node test cluster for cnnd's tests.
# Do not edit: \`scripts/slurm-cluster.sh start\` rewrites it (and restarts the cluster) when it differs.
ClusterName=cnnd-test
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
LaunchType=launch/slurm
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
ReturnToService=2
MinJobAge=300
KillWait=30
InactiveLimit=0
Waittime=0
SlurmctldTimeout=120
SlurmdTimeout=300
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$node NodeAddr=127.0.0.1 NodeHostname=$node CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
PartitionName=down Nodes=$node Default=NO MaxTime=INFINITE State=DOWN
EOF
}

# Writes the config; returns 0 when it changed (or was missing), 1 when already current.
write_conf() {
  local node="$1" want
  want="$(render_conf "$node")"
  install -d -m 0755 "$CONF_DIR"
  if [ -f "$CONF" ] && [ "$(cat "$CONF")" = "$want" ]; then
    return 1
  fi
  if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
    local backup
    backup="$CONF.cnnd-backup.$(date +%Y%m%d%H%M%S)"
    cp -p "$CONF" "$backup"
    say "an $CONF not written by this script was there: saved it as $backup"
  fi
  printf '%s\n' "$want" >"$CONF.tmp.$$"
  chmod 0644 "$CONF.tmp.$$"
  mv -f "$CONF.tmp.$$" "$CONF"
  # Old Debian/Ubuntu packages (Slurm < 21) read /etc/slurm-llnl instead.
  if [ -d /etc/slurm-llnl ] && [ ! -e /etc/slurm-llnl/slurm.conf ]; then
    ln -s "$CONF" /etc/slurm-llnl/slurm.conf
  fi
  return 0
}

node_state() {
  timeout 10 sinfo -h -n "$1" -o %T 2>/dev/null | head -n 1 || true
}

# The node answers and can take jobs (idle, or busy with jobs the tests submitted).
node_usable() {
  case "$(node_state "$1")" in
    idle | mixed | allocated | completing) return 0 ;;
    *) return 1 ;;
  esac
}

show_logs() {
  local f
  for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log"; do
    if [ -f "$f" ]; then
      echo "----- last lines of $f -----" >&2
      tail -n 30 "$f" >&2 || true
    fi
  done
}

# Cancels every job, and waits for the running ones to end: a job that ignores SIGTERM gets
# SIGKILL only after KillWait (30 s), so this can take that long.
cancel_all_jobs() {
  live_pid "$CTLD_PID" >/dev/null || return 0
  local ids i
  ids="$(timeout 10 squeue -h -o %i 2>/dev/null || true)"
  [ -n "$ids" ] || return 0
  say "cancelling jobs: $(echo "$ids" | tr '\n' ' ')"
  # shellcheck disable=SC2086 # one id per word
  timeout 10 scancel $ids 2>/dev/null || true
  for i in $(seq 1 90); do
    [ -z "$(timeout 10 squeue -h -t running,completing,suspended -o %i 2>/dev/null || true)" ] && return 0
    sleep 0.5
  done
  say "some jobs still had not ended 45 s after scancel: $(timeout 10 squeue -h -t running,completing -o %i | tr "\n" " " || true)"
}

stop_daemon() {
  local name="$1" file="$2" pid i
  pid="$(live_pid "$file")" || {
    rm -f "$file"
    return 0
  }
  say "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "$name (pid $pid) ignored SIGTERM for 10 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$file"
}

stop_cluster() {
  cancel_all_jobs
  stop_daemon slurmd "$SLURMD_PID"
  stop_daemon slurmctld "$CTLD_PID"
  if [ -e "$MUNGE_OURS" ]; then
    stop_daemon munged "$MUNGE_PID"
    rm -f "$MUNGE_OURS"
  fi
}

wait_for_node() {
  local node="$1" i state resumed=0
  for i in $(seq 1 60); do
    state="$(node_state "$node")"
    case "$state" in
      idle | mixed | allocated | completing) return 0 ;;
      down* | drain* | fail*)
        if [ "$resumed" = 0 ] && [ "$i" -ge 4 ]; then
          say "node $node is '$state': scontrol update state=resume"
          timeout 10 scontrol update nodename="$node" state=resume || true
          resumed=1
        fi
        ;;
    esac
    sleep 0.5
  done
  say "node $node did not become idle in 30 s; sinfo says '${state:-nothing}'"
  timeout 10 sinfo -N -l >&2 || true
  timeout 10 scontrol show node "$node" >&2 || true
  show_logs
  die "the Slurm node never became usable"
}

verify_job() {
  local out="$STATE_DIR/verify.out" id state="" i
  rm -f "$out"
  # Polls squeue rather than `sbatch --wait`, which checks only every few seconds.
  id="$(timeout 30 sbatch --parsable -p debug -J cnnd-verify -t 00:02:00 -o "$out" --chdir "$STATE_DIR" --wrap 'echo ok')" ||
    {
      show_logs
      die "sbatch of the test job failed"
    }
  id="${id%%;*}"
  for i in $(seq 1 600); do
    state="$(timeout 10 squeue -h -j "$id" --states=all -o %T 2>/dev/null || true)"
    case "$state" in
      COMPLETED | FAILED | CANCELLED* | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE | PREEMPTED) break ;;
    esac
    sleep 0.2
  done
  if [ "$state" != COMPLETED ] || [ "$(cat "$out" 2>/dev/null)" != ok ]; then
    say "the test job $id (sbatch -p debug --wrap 'echo ok') did not work: state '${state:-unknown}', output '$(cat "$out" 2>/dev/null || true)'"
    timeout 10 squeue -h --states=all -o '%i|%j|%T|%r' >&2 || true
    show_logs
    die "Slurm does not run jobs"
  fi
  rm -f "$out"
}

start_cluster() {
  need_root
  install_packages
  local node changed=0 t0=$SECONDS
  node="$(node_name)"
  install -d -m 0755 "$STATE_DIR" "$RUN_DIR" "$LOG_DIR" "$STATE_DIR/ctld" "$STATE_DIR/spool"
  write_conf "$node" && changed=1
  start_munge
  if [ "$changed" = 0 ] && live_pid "$CTLD_PID" >/dev/null && live_pid "$SLURMD_PID" >/dev/null &&
    node_usable "$node"; then
    say "already running (node $node: $(node_state "$node"))"
    return 0
  fi
  # Something is missing or the config changed: start over, from a clean state.
  cancel_all_jobs
  stop_daemon slurmd "$SLURMD_PID"
  stop_daemon slurmctld "$CTLD_PID"
  # -c: forget the jobs and node states of an earlier run (this is a test cluster).
  slurmctld -c || {
    show_logs
    die "slurmctld did not start"
  }
  slurmd -N "$node" || {
    show_logs
    die "slurmd did not start"
  }
  wait_for_node "$node"
  verify_job
  say "cluster cnnd-test up in $((SECONDS - t0)) s: node $node ($(node_state "$node")), partitions debug (default) and down (DOWN); config $CONF, logs $LOG_DIR"
}

status_cluster() {
  local node ok=0 pid
  node="$(node_name)"
  if pid="$(live_pid "$CTLD_PID")"; then echo "slurmctld: running (pid $pid)"; else
    echo "slurmctld: not running"
    ok=1
  fi
  if pid="$(live_pid "$SLURMD_PID")"; then echo "slurmd: running (pid $pid)"; else
    echo "slurmd: not running"
    ok=1
  fi
  if munge_works; then
    if [ -e "$MUNGE_OURS" ]; then echo "munged: running (started by this script)"; else echo "munged: running"; fi
  else
    echo "munged: not working"
    ok=1
  fi
  if [ "$ok" = 0 ]; then
    timeout 10 sinfo || ok=1
    timeout 10 squeue || true
    node_usable "$node" || ok=1
  fi
  return "$ok"
}

[ $# = 1 ] || usage
case "$1" in
  start) start_cluster ;;
  stop)
    need_root
    stop_cluster
    ;;
  status) status_cluster || exit 1 ;;
  *) usage ;;
esac
