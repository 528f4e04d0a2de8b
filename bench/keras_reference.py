#!/usr/bin/env python3
"""Keras (TensorFlow, CPU) reference of cnnd's training side, for speed comparisons.

The same model family as src/model.rs and bench/torch_reference.py, in tf.keras, channels
last: `blocks` x [Conv2D(k, same padding, no bias with batch norm) -> BatchNormalization
(momentum 0.9 and epsilon 1e-5, i.e. PyTorch's 0.1 / 1e-5) -> activation -> MaxPooling2D(2)],
then a dense head (Flatten -> Dense(units) -> activation -> Dropout -> Dense(classes)) or a GAP
head (GlobalAveragePooling2D -> Dropout -> Dense(classes)); logits with sparse categorical
cross-entropy; Adam (epsilon 1e-8 as PyTorch's) / AdamW / SGD with momentum. Keras's own
initialisation (Glorot uniform), so accuracies differ slightly from the other two; the work per
image is the same.

Data as torch_reference.py reads it (MNIST IDX, gzip or not, first --train-limit examples,
floor(n * --val-fraction) held out with numpy's seeded permutation). Each epoch is one
`model.fit(..., epochs=1, shuffle=True)` call over in-memory arrays; validation and test run
with `model.evaluate` in batches of 1000, outside the timed training loop.

Prints one JSON line per epoch (images_per_second = training images / seconds of the training
loop, validation excluded, as cnnd and torch_reference.py report it; the first epoch includes
tracing the training step into a graph, which images_per_second_after_first_batch leaves out)
and a final line with the test metrics.

Threads: --threads sets TensorFlow's intra-op pool; the inter-op pool is 1 (one op at a time,
as libtorch's training loop runs them). Needs tensorflow-cpu: see bench/README.md.
"""

import argparse
import gzip
import json
import math
import os
import sys
import time

# Quiet TensorFlow's start-up logging; must be set before the import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


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
    x = (images.astype(np.float32) / 255.0)[..., np.newaxis]  # NHWC
    y = labels.astype(np.int64)
    return x, y


ACTIVATIONS = {
    "relu": "relu",
    "leaky_relu": "leaky_relu",
    "elu": "elu",
    "gelu": "gelu",
    "tanh": "tanh",
}


def build(keras, input_size, channels, classes, a):
    layers = keras.layers
    inputs = keras.Input(shape=(input_size, input_size, channels))
    x = inputs
    for i in range(a.blocks):
        filters = a.base_filters * 2 ** i
        x = layers.Conv2D(filters, a.kernel_size, padding="same", use_bias=not a.batch_norm)(x)
        if a.batch_norm:
            x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)
        x = layers.Activation(ACTIVATIONS[a.activation])(x)
        x = layers.MaxPooling2D(2)(x)
    if a.head == "dense":
        x = layers.Flatten()(x)
        x = layers.Dense(a.units, activation=ACTIVATIONS[a.activation])(x)
        x = layers.Dropout(a.dropout)(x)
    else:
        x = layers.GlobalAveragePooling2D()(x)
        x = layers.Dropout(a.dropout)(x)
    outputs = layers.Dense(classes)(x)
    return keras.Model(inputs, outputs)


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
    ap.add_argument("--jit-compile", choices=["auto", "0", "1"], default="auto",
                    help="Keras's jit_compile (XLA); auto is Keras's default")
    a = ap.parse_args()

    import_start = time.perf_counter()
    import tensorflow as tf
    import keras
    import_seconds = time.perf_counter() - import_start
    tf.config.threading.set_intra_op_parallelism_threads(a.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(a.seed)

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
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    x_train, y_train = x_all[train_idx], y_all[train_idx]
    x_val, y_val = x_all[val_idx], y_all[val_idx]
    n_train = x_train.shape[0]

    model = build(keras, x_train.shape[1], x_train.shape[3], 10, a)
    if a.optimizer == "adam":
        opt = keras.optimizers.Adam(learning_rate=a.learning_rate, epsilon=1e-8,
                                    weight_decay=a.weight_decay or None)
    elif a.optimizer == "adamw":
        opt = keras.optimizers.AdamW(learning_rate=a.learning_rate, epsilon=1e-8,
                                     weight_decay=a.weight_decay)
    else:
        opt = keras.optimizers.SGD(learning_rate=a.learning_rate, momentum=a.momentum,
                                   weight_decay=a.weight_decay or None)
    jit = {"auto": "auto", "0": False, "1": True}[a.jit_compile]
    model.compile(optimizer=opt,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], jit_compile=jit)
    print(json.dumps({"tensorflow": tf.__version__, "keras": keras.__version__,
                      "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
                      "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
                      "jit_compile": a.jit_compile,
                      "jit_compile_effective": bool(getattr(model, "jit_compile", False)),
                      # trainable only, as PyTorch counts (Keras's count_params() adds the
                      # batch-norm moving statistics)
                      "parameters": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
                      "train_examples": n_train, "val_examples": n_val,
                      "test_examples": int(x_test.shape[0]),
                      "import_seconds": round(import_seconds, 3),
                      "load_seconds": round(load_seconds, 3)}), flush=True)

    class FirstBatch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 0 and self.first_batch_end is None:
                self.first_batch_end = time.perf_counter()

    best_acc, best_epoch, best_weights = -1.0, 0, None
    for epoch in range(1, a.epochs + 1):
        first = FirstBatch()
        first.first_batch_end = None
        started = time.perf_counter()
        hist = model.fit(x_train, y_train, batch_size=a.batch_size, epochs=1, shuffle=True,
                         verbose=0, callbacks=[first])
        train_seconds = time.perf_counter() - started
        train_loss = float(hist.history["loss"][-1])
        if not math.isfinite(train_loss):
            print(json.dumps({"epoch": epoch, "error": "diverged"}), flush=True)
            sys.exit(1)
        train_acc = float(hist.history["accuracy"][-1])
        val_loss, val_acc = model.evaluate(x_val, y_val, batch_size=1000, verbose=0)
        seconds = time.perf_counter() - started
        after_first = None
        if first.first_batch_end is not None:
            rest = train_seconds - (first.first_batch_end - started)
            after_first = (n_train - min(a.batch_size, n_train)) / max(rest, 1e-9)
        print(json.dumps({"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
                          "val_loss": float(val_loss), "val_accuracy": float(val_acc),
                          "seconds": seconds, "images_per_second": n_train / train_seconds,
                          "images_per_second_after_first_batch": after_first}), flush=True)
        if val_acc > best_acc:
            best_acc, best_epoch = val_acc, epoch
            best_weights = model.get_weights()
    model.set_weights(best_weights)
    test_loss, test_acc = model.evaluate(x_test, y_test, batch_size=1000, verbose=0)
    print(json.dumps({"best_epoch": best_epoch, "test_loss": float(test_loss),
                      "test_accuracy": float(test_acc)}), flush=True)


if __name__ == "__main__":
    main()
