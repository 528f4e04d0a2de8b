#!/usr/bin/env bash
# Downloads a public data set into the data directory cnnd reads (--data-dir / CNND_DATA_DIR).
#
#   scripts/fetch-data.sh NAME [DEST]
#
# NAME: mnist | fashion_mnist | cifar10. DEST defaults to ${CNND_DATA_DIR:-$HOME/.cache/cnnd/data}.
# Files land in DEST/mnist/, DEST/fashion-mnist/ or DEST/cifar-10-batches-bin/; files already
# there are kept (not downloaded again). Uses curl, or python3 when curl is missing. Exits 2 on
# bad arguments, 1 with one line naming what could not be downloaded and from where.
set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: scripts/fetch-data.sh NAME [DEST]
  NAME  mnist | fashion_mnist | cifar10
  DEST  data directory (default: ${CNND_DATA_DIR:-$HOME/.cache/cnnd/data})
EOF
  exit 2
}

[ $# -ge 1 ] && [ $# -le 2 ] || usage
name="$1"
case "$name" in
  -h|--help) usage ;;
  mnist|fashion_mnist|cifar10) ;;
  *) echo "fetch-data: unknown data set '$name'" >&2; usage ;;
esac
dest="${2:-${CNND_DATA_DIR:-$HOME/.cache/cnnd/data}}"

say() { printf 'fetch-data: %s\n' "$*" >&2; }

# download URL FILE: fetches URL into FILE atomically (FILE.part, then rename); false on failure.
download() {
  local url="$1" out="$2"
  rm -f "$out.part"
  if command -v curl >/dev/null 2>&1; then
    curl -fsSL --retry 2 --connect-timeout 15 --max-time 1800 -o "$out.part" "$url" 2>/dev/null \
      || { rm -f "$out.part"; return 1; }
  elif command -v python3 >/dev/null 2>&1; then
    python3 - "$url" "$out.part" <<'EOF' 2>/dev/null || { rm -f "$out.part"; return 1; }
import shutil, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=30) as r, open(sys.argv[2], "wb") as f:
    shutil.copyfileobj(r, f)
EOF
  else
    echo "fetch-data: neither curl nor python3 is installed; cannot download $url" >&2
    exit 1
  fi
  mv -f "$out.part" "$out"
}

# fetch_files DIR FILE... -- MIRROR...: each FILE missing from DIR (raw or .gz name) is taken
# from the first MIRROR that serves MIRROR/FILE.
fetch_files() {
  local dir="$1"; shift
  local files=() mirrors=() f m ok
  while [ "$1" != "--" ]; do files+=("$1"); shift; done
  shift
  mirrors=("$@")
  mkdir -p "$dir"
  for f in "${files[@]}"; do
    if [ -s "$dir/$f" ] || [ -s "$dir/${f%.gz}" ]; then
      say "$dir/$f already present"
      continue
    fi
    ok=0
    for m in "${mirrors[@]}"; do
      say "downloading $m$f"
      if download "$m$f" "$dir/$f"; then ok=1; break; fi
    done
    if [ "$ok" = 0 ]; then
      echo "fetch-data: could not download $f for $name from ${mirrors[*]} (offline or mirror down?)" >&2
      exit 1
    fi
  done
  say "$name is in $dir"
}

idx_files=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)

case "$name" in
  mnist)
    fetch_files "$dest/mnist" "${idx_files[@]}" -- \
      https://ossci-datasets.s3.amazonaws.com/mnist/ https://storage.googleapis.com/cvdf-datasets/mnist/
    ;;
  fashion_mnist)
    fetch_files "$dest/fashion-mnist" "${idx_files[@]}" -- \
      http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/
    ;;
  cifar10)
    dir="$dest/cifar-10-batches-bin"
    url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
    all=1
    for f in data_batch_1.bin data_batch_2.bin data_batch_3.bin data_batch_4.bin data_batch_5.bin test_batch.bin; do
      [ -s "$dir/$f" ] || [ -s "$dir/$f.gz" ] || all=0
    done
    if [ "$all" = 1 ]; then
      say "$dir already holds CIFAR-10"
      exit 0
    fi
    mkdir -p "$dest"
    tarball="$dest/cifar-10-binary.tar.gz"
    if [ ! -s "$tarball" ]; then
      say "downloading $url (~163 MB)"
      download "$url" "$tarball" \
        || { echo "fetch-data: could not download cifar10 from $url (offline or mirror down?)" >&2; exit 1; }
    fi
    # The archive holds cifar-10-batches-bin/ at its top.
    tar -xzf "$tarball" -C "$dest" \
      || { echo "fetch-data: $tarball is corrupt (delete it and run again)" >&2; exit 1; }
    rm -f "$tarball"
    say "cifar10 is in $dir"
    ;;
esac
