#!/usr/bin/env python3
"""Where oneDNN's time goes: reads the lines `ONEDNN_VERBOSE=profile` makes libtorch print
(stdin) and sums the execution time of each primitive by kind, implementation and direction.

tch has no profiler binding, and PyTorch's profiler does not run inside cnnd's trainer, but
both sides call the same oneDNN, which times every primitive it executes when asked:

  ONEDNN_VERBOSE=profile python bench/torch_reference.py --epochs 1 --train-limit 5000 \\
      --channels-last 1 --bf16 1 | python3 bench/onednn_breakdown.py
  ONEDNN_VERBOSE=profile cargo bench -p cnnd-worker --bench trainer -- --sides ours \\
      --threads 1 --heads dense --kernels 3 --precision bf16 --train-limit 5000 \\
      | python3 bench/onednn_breakdown.py

Only what runs in oneDNN is counted (convolutions, and on PyTorch's side whatever else it
routes there); batch norm, activations, pooling and the optimiser run in ATen's own kernels
and are not in these lines. Prints a table, largest first, and the total.
"""

import collections
import sys


def main():
    totals = collections.defaultdict(lambda: [0, 0.0])
    for line in sys.stdin:
        if not line.startswith("onednn_verbose,") or ",exec," not in line:
            continue
        fields = line.rstrip("\n").split(",")
        # onednn_verbose,[timestamp,]primitive,exec,cpu,KIND,IMPL,PROP,SRC/DST...,time_ms
        try:
            at = fields.index("exec")
            kind, impl, prop = fields[at + 2], fields[at + 3], fields[at + 4]
            ms = float(fields[-1])
        except (ValueError, IndexError):
            continue
        entry = totals[(kind, impl, prop)]
        entry[0] += 1
        entry[1] += ms
    if not totals:
        sys.exit("no oneDNN exec lines on stdin: set ONEDNN_VERBOSE=profile on the command")
    grand = sum(ms for _, ms in totals.values())
    print(f"{'primitive':<14} {'implementation':<40} {'direction':<22} {'calls':>8} {'ms':>10} {'share':>6}")
    for (kind, impl, prop), (calls, ms) in sorted(totals.items(), key=lambda kv: -kv[1][1]):
        print(f"{kind:<14} {impl:<40} {prop:<22} {calls:>8} {ms:>10.1f} {ms / grand:>6.1%}")
    print(f"{'total':<14} {'':<40} {'':<22} {sum(c for c, _ in totals.values()):>8} {grand:>10.1f}")


if __name__ == "__main__":
    main()
