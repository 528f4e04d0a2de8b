#!/usr/bin/env python3
"""Per-batch phase timings of the PyTorch reference's training step, for `cargo bench --bench
trainer -- --profile N`, which times the same phases of cnnd's step (src/model.rs and
src/train/optim.rs) in-process.

One training batch = index_select of the batch (batch) -> forward in training mode (forward)
-> cross-entropy (loss) -> gradients (backward: torch.autograd.grad, as cnnd's optimiser takes
them) -> Adam update (step: torch.optim.Adam, single-tensor path) -> the epoch's loss/accuracy
accumulation (metrics). Each phase is timed with perf_counter around synchronous CPU kernels.
The model, data and arguments are bench/torch_reference.py's (imported from it).

Prints one JSON line: the median seconds of each phase per batch over --batches batches after
--warmup batches.
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True  # no __pycache__ in bench/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference as ref  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=os.environ.get("CNND_DATA_DIR", "data"))
    ap.add_argument("--kernel-size", type=int, default=3)
    ap.add_argument("--head", choices=["dense", "gap"], default="dense")
    ap.add_argument("--dropout", type=float, default=0.5)
    ap.add_argument("--units", type=int, default=128)
    ap.add_argument("--base-filters", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--learning-rate", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--channels-last", type=int, choices=[0, 1], default=0)
    ap.add_argument("--bf16", type=int, choices=[0, 1], default=0,
                    help="1: bf16 autocast over forward and loss (timed as those phases)")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    x, y = ref.load_split(a.data_dir, "train")
    model = ref.Net(1, x.shape[2], 10, a.kernel_size, a.base_filters, a.blocks, a.head, a.units,
                    a.dropout, True, "relu")
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=a.learning_rate)
    model.train()
    perm = torch.randperm(x.shape[0])
    loss_sum = torch.zeros((), dtype=torch.float32)
    correct = torch.zeros((), dtype=torch.int64)
    phases = {k: [] for k in ("batch", "forward", "loss", "backward", "step", "metrics", "total")}
    n_batches = x.shape[0] // a.batch_size
    for b in range(a.warmup + a.batches):
        start = (b % n_batches) * a.batch_size
        t0 = time.perf_counter()
        idx = perm[start:start + a.batch_size]
        xs, ys = x.index_select(0, idx), y.index_select(0, idx)
        t1 = time.perf_counter()
        with ref.autocast(x.device, bool(a.bf16)):
            logits = model(xs)
            t2 = time.perf_counter()
            loss = F.cross_entropy(logits, ys)
        t3 = time.perf_counter()
        grads = torch.autograd.grad(loss, params)
        t4 = time.perf_counter()
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        for p in params:
            p.grad = None
        t5 = time.perf_counter()
        loss = loss.detach()
        loss_sum += loss * idx.shape[0]
        correct += (logits.detach().argmax(-1) == ys).sum()
        t6 = time.perf_counter()
        if b >= a.warmup:
            for k, v in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t6 - t0)):
                phases[k].append(v)
    out = {k: statistics.median(v) for k, v in phases.items()}
    out["images_per_second"] = a.batch_size / out["total"]
    out["threads"] = torch.get_num_threads()
    out["torch"] = torch.__version__
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
