#!/usr/bin/env bash
# A throw-away PostgreSQL server for tests and trials of cnnd's PostgreSQL store: a fresh
# cluster (initdb) in a folder of its own, listening on 127.0.0.1 at a free port, trusting
# local connections, C collation. Usage:
#
#   scripts/postgres.sh start DIR   # create DIR/data and start the server; prints its URL,
#                                   # postgres://cnnd@127.0.0.1:PORT/cnnd (database cnnd)
#   scripts/postgres.sh stop DIR    # stop it (fast shutdown); DIR stays
#   scripts/postgres.sh url DIR     # print the URL of a server this script started in DIR
#   scripts/postgres.sh install     # as root: install Debian's postgresql package when no
#                                   # server binaries are found (scripts/test.sh runs this)
#
# Run as root, the server runs as the `postgres` user (PostgreSQL refuses root) and DIR is
# handed to it; otherwise it runs as you. The binaries come from $CNND_PG_BIN, else
# `pg_config --bindir`, else /usr/lib/postgresql/*/bin (Debian's postgresql-15 package).
# Never for production: no password, and fsync off unless CNND_PG_FSYNC=on (benchmarks: then
# with synchronous_commit off, durable like SQLite's WAL with synchronous=NORMAL).
set -euo pipefail
say() { echo "postgres.sh: $*" >&2; }
usage() { echo "usage: scripts/postgres.sh start|stop|url DIR, or scripts/postgres.sh install" >&2; exit 2; }
cmd=${1:-}
if [ "$cmd" = install ]; then
  [ $# -eq 1 ] || usage
else
  [ $# -eq 2 ] || usage
  dir=$(realpath -m "$2")
fi

# Prints the folder of initdb and pg_ctl; empty when there is none.
find_bin_dir() {
  if [ -n "${CNND_PG_BIN:-}" ]; then echo "$CNND_PG_BIN"; return; fi
  if command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir; return
  fi
  local d found=""
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && found="$d"
  done
  echo "$found"
}

bin_dir() {
  local found
  found=$(find_bin_dir)
  if [ -n "$found" ]; then echo "$found"; return; fi
  say "no PostgreSQL server binaries (initdb, pg_ctl): install Debian's postgresql-15, or set CNND_PG_BIN"
  exit 1
}

# Runs a PostgreSQL binary as the user that owns the cluster.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

case "$cmd" in
  install)
    if [ -n "$(find_bin_dir)" ]; then exit 0; fi
    [ "$(id -u)" = 0 ] || { say "no PostgreSQL server binaries, and installing them needs root (apt-get install postgresql)"; exit 1; }
    say "installing Debian's postgresql with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >/dev/null
    [ -n "$(find_bin_dir)" ] || { say "apt-get installed postgresql, but no initdb was found"; exit 1; }
    ;;
  start)
    bin=$(bin_dir)
    mkdir -p "$dir"
    if [ -f "$dir/url" ] && as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
      cat "$dir/url"; exit 0
    fi
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    if [ ! -d "$dir/data" ]; then
      as_owner "$bin/initdb" -D "$dir/data" -U cnnd -A trust -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; say "initdb failed"; exit 1; }
    fi
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=${CNND_PG_FSYNC:-off} -c synchronous_commit=off -c max_connections=200" start >/dev/null \
      || { cat "$dir/server.log" >&2; say "the server did not start"; exit 1; }
    as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U cnnd cnnd 2>/dev/null || true
    url="postgres://cnnd@127.0.0.1:$port/cnnd"
    echo "$url" >"$dir/url"
    echo "$url"
    ;;
  stop)
    bin=$(bin_dir)
    [ -d "$dir/data" ] || { say "no cluster in $dir"; exit 0; }
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    ;;
  url)
    cat "$dir/url"
    ;;
  *) usage ;;
esac
