#!/usr/bin/env python3
"""PyTorch reference of cnnd's training side, for speed and accuracy comparisons.

The same model family as src/model.rs (DESIGN.md section 2) with PyTorch's default
initialisation (which src/model.rs reproduces), and the same training loop as src/train.rs:
- data: the MNIST IDX files (gzip or not) from <data-dir>/mnist/ or <data-dir>/, read with
  gzip + numpy, scaled to 0..1; the first --train-limit training examples (0: all), of which
  floor(n * --val-fraction) are held out for validation by a seeded permutation (numpy's, so
  the same size as cnnd's split but not the same examples); the first --test-limit test
  examples;
- training data resident as one tensor; each epoch a torch.randperm shuffle and
  index_select per batch; loss and correct counts accumulated as tensors and read once per
  epoch; Adam (lr 1e-3 by default) / AdamW / SGD with momentum;
- evaluation in eval mode under torch.no_grad in batches of 1000;
- the best epoch by validation accuracy is kept and gives the test metrics.

Prints one JSON line per epoch (images_per_second = training images / seconds of the training
loop, validation excluded, as cnnd reports it) and a final line with the test metrics.
No augmentation (cnnd's is not part of the speed comparison). `--channels-last 1` and
`--bf16 1` give PyTorch's best CPU recipe from its performance guide (channels-last memory
format, bf16 autocast).
"""

import argparse
import copy
import gzip
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def find_file(data_dir, folder, name):
    tried = []
    for d in (os.path.join(data_dir, folder), data_dir):
        for n in (name + ".gz", name):
            p = os.path.join(d, n)
            tried.append(p)
            if os.path.isfile(p):
                return p
    sys.exit(f"{name} not found; tried {', '.join(tried)}. Set --data-dir or run scripts/setup.sh")


def read_idx(path, ndims):
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 8 or raw[3] != ndims:
        sys.exit(f"{path}: not an IDX file of {ndims} dimensions of unsigned bytes")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndims)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndims)
    if data.size != math.prod(dims):
        sys.exit(f"{path}: truncated or corrupt (dimensions {dims}, {data.size} bytes of data)")
    return data.reshape(dims)


def load_split(data_dir, prefix):
    images = read_idx(find_file(data_dir, "mnist", f"{prefix}-images-idx3-ubyte"), 3)
    labels = read_idx(find_file(data_dir, "mnist", f"{prefix}-labels-idx1-ubyte"), 1)
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1).contiguous()
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
}


class Net(nn.Module):
    def __init__(self, channels, input_size, classes, kernel_size, base_filters, blocks, head,
                 units, dropout, batch_norm, activation):
        super().__init__()
        layers = []
        in_ch, side = channels, input_size
        for i in range(blocks):
            out_ch = base_filters * 2 ** i
            layers.append(nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2,
                                    bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(ACTIVATIONS[activation]())
            layers.append(nn.MaxPool2d(2, 2))
            in_ch, side = out_ch, side // 2
        self.features = nn.Sequential(*layers)
        if head == "dense":
            self.head = nn.Sequential(
                nn.Flatten(), nn.Linear(in_ch * side * side, units), ACTIVATIONS[activation](),
                nn.Dropout(dropout), nn.Linear(units, classes))
        else:
            self.head = nn.Sequential(
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                nn.Linear(in_ch, classes))

    def forward(self, x):
        return self.head(self.features(x))


def autocast(device, bf16):
    """PyTorch's mixed precision as its performance guide recommends: bf16 autocast over the
    forward pass and the loss (off: a no-op context)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def evaluate(model, x, y, batch=1000, bf16=False):
    model.eval()
    n = x.shape[0]
    loss = torch.zeros((), dtype=torch.float32, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    with torch.no_grad():
        for start in range(0, n, batch):
            xs, ys = x[start:start + batch], y[start:start + batch]
            with autocast(x.device, bf16):
                logits = model(xs)
            loss += F.cross_entropy(logits.float(), ys, reduction="sum")
            correct += (logits.argmax(-1) == ys).sum()
    return loss.item() / max(n, 1), correct.item() / max(n, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=os.environ.get("CNND_DATA_DIR", "data"))
    ap.add_argument("--kernel-size", type=int, default=3)
    ap.add_argument("--head", choices=["dense", "gap"], default="dense")
    ap.add_argument("--dropout", type=float, default=0.5)
    ap.add_argument("--units", type=int, default=128)
    ap.add_argument("--base-filters", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--batch-norm", type=int, choices=[0, 1], default=1)
    ap.add_argument("--activation", choices=sorted(ACTIVATIONS), default="relu")
    ap.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default="adam")
    ap.add_argument("--learning-rate", type=float, default=1e-3)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-limit", type=int, default=0)
    ap.add_argument("--test-limit", type=int, default=0)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (data and model on the device)")
    ap.add_argument("--channels-last", type=int, choices=[0, 1], default=0,
                    help="1: model and images in channels-last memory format (not PyTorch's default)")
    ap.add_argument("--bf16", type=int, choices=[0, 1], default=0,
                    help="1: torch.autocast(dtype=torch.bfloat16) over forward and loss, fp32 weights")
    a = ap.parse_args()
    device = torch.device(a.device)

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    load_start = time.perf_counter()
    x_all, y_all = load_split(a.data_dir, "train")
    x_test, y_test = load_split(a.data_dir, "t10k")
    load_seconds = time.perf_counter() - load_start
    if a.train_limit:
        x_all, y_all = x_all[:a.train_limit], y_all[:a.train_limit]
    if a.test_limit:
        x_test, y_test = x_test[:a.test_limit], y_test[:a.test_limit]
    n = x_all.shape[0]
    n_val = min(int(math.floor(n * a.val_fraction)), n)
    perm = np.random.default_rng(a.seed).permutation(n)
    val_idx = torch.from_numpy(np.sort(perm[:n_val]))
    train_idx = torch.from_numpy(np.sort(perm[n_val:]))
    x_train, y_train = x_all.index_select(0, train_idx), y_all.index_select(0, train_idx)
    x_val, y_val = x_all.index_select(0, val_idx), y_all.index_select(0, val_idx)
    n_train = x_train.shape[0]
    x_train, y_train = x_train.to(device), y_train.to(device)
    x_val, y_val = x_val.to(device), y_val.to(device)
    x_test, y_test = x_test.to(device), y_test.to(device)

    model = Net(1, x_train.shape[2], 10, a.kernel_size, a.base_filters, a.blocks, a.head,
                a.units, a.dropout, bool(a.batch_norm), a.activation).to(device)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x_train = x_train.contiguous(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    if a.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=a.learning_rate, weight_decay=a.weight_decay)
    elif a.optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=a.learning_rate, weight_decay=a.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=a.learning_rate, momentum=a.momentum,
                              weight_decay=a.weight_decay)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                      "parameters": params, "train_examples": n_train, "val_examples": n_val,
                      "test_examples": x_test.shape[0], "load_seconds": round(load_seconds, 3)}),
          flush=True)

    best_acc, best_epoch, best_state = -1.0, 0, None
    for epoch in range(1, a.epochs + 1):
        started = time.perf_counter()
        model.train()
        perm = torch.randperm(n_train, device=device)
        loss_sum = torch.zeros((), dtype=torch.float32, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        for start in range(0, n_train, a.batch_size):
            idx = perm[start:start + a.batch_size]
            xs, ys = x_train.index_select(0, idx), y_train.index_select(0, idx)
            with autocast(device, bool(a.bf16)):
                logits = model(xs)
                loss = F.cross_entropy(logits, ys)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss = loss.detach()
            loss_sum += loss * idx.shape[0]
            correct += (logits.detach().argmax(-1) == ys).sum()
        train_loss = loss_sum.item() / n_train  # synchronises the device before timing
        train_seconds = time.perf_counter() - started
        if not math.isfinite(train_loss):
            print(json.dumps({"epoch": epoch, "error": "diverged"}), flush=True)
            sys.exit(1)
        train_acc = correct.item() / n_train
        val_loss, val_acc = evaluate(model, x_val, y_val, bf16=bool(a.bf16))
        seconds = time.perf_counter() - started
        print(json.dumps({"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
                          "val_loss": val_loss, "val_accuracy": val_acc, "seconds": seconds,
                          "images_per_second": n_train / train_seconds}), flush=True)
        if val_acc > best_acc:
            best_acc, best_epoch = val_acc, epoch
            best_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    test_loss, test_acc = evaluate(model, x_test, y_test, bf16=bool(a.bf16))
    print(json.dumps({"best_epoch": best_epoch, "test_loss": test_loss, "test_accuracy": test_acc}),
          flush=True)


if __name__ == "__main__":
    main()
