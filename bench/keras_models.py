#!/usr/bin/env python3
"""Builds models of cnnd's family in Keras, layer by layer as a Keras user writes them, and
records what Keras's model.summary() reports for each: every layer's class, output shape and
parameter count, and the trainable, non-trainable and total counts.

The output, crates/cnnd-core/tests/data/keras_models.json, is what the tests
`crates/cnnd-core/tests/keras_models.rs` (cnnd's summary arithmetic) and
`crates/cnnd-worker/tests/keras_models.rs` (the model libtorch builds) compare against, so a
change to cnnd's model family that parts from Keras fails there. Each case carries the cnnd
hyperparameters (as a sweep's `fixed` gives them) that stand for the same model.

Keras is not needed to run the tests, only to record again (any Keras 3 backend; jax is the
lightest to install):

    python3 -m venv /tmp/keras && /tmp/keras/bin/pip install keras jax
    KERAS_BACKEND=jax /tmp/keras/bin/python bench/keras_models.py \
        > crates/cnnd-core/tests/data/keras_models.json
"""

import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
import keras  # noqa: E402
from keras import layers  # noqa: E402

# cnnd defaults that a case does not set (crates/cnnd-core/src/sweep.rs, TrialParams).
DEFAULTS = {
    "kernelSize": 3,
    "baseFilters": 32,
    "blocks": 2,
    "filters": [],
    "kernelSizes": [],
    "padding": "same",
    "strides": 1,
    "convBias": "auto",
    "pooling": "max",
    "poolSize": 2,
    "head": "dense",
    "units": 128,
    "dropout": 0.5,
    "batchNorm": True,
    "activation": "relu",
    "leakySlope": 0.01,
    "output": "softmax",
}


def activation_layer(p):
    a = p["activation"]
    if a == "relu":
        return layers.ReLU()
    if a == "relu6":
        return layers.ReLU(max_value=6.0)
    if a == "leaky_relu":
        return layers.LeakyReLU(negative_slope=p["leakySlope"])
    return layers.Activation({"elu": "elu", "gelu": "gelu", "tanh": "tanh"}[a])


def keras_model(fixed, input_shape, classes):
    """The Keras model of cnnd hyperparameters `fixed` on `input_shape` (height, width,
    channels) with `classes` classes."""
    p = dict(DEFAULTS, **fixed)
    blocks = len(p["filters"]) or len(p["kernelSizes"]) or p["blocks"]
    use_bias = {"auto": not p["batchNorm"], "always": True, "never": False}[p["convBias"]]
    units = p["units"] if isinstance(p["units"], list) else [p["units"]]
    model = keras.Sequential([keras.Input(shape=input_shape)])
    for i in range(blocks):
        filters = p["filters"][i] if p["filters"] else p["baseFilters"] * 2**i
        kernel = p["kernelSizes"][i] if p["kernelSizes"] else p["kernelSize"]
        model.add(
            layers.Conv2D(
                filters,
                kernel,
                strides=p["strides"],
                padding=p["padding"],
                use_bias=use_bias,
            )
        )
        if p["batchNorm"]:
            model.add(layers.BatchNormalization())
        model.add(activation_layer(p))
        if p["poolSize"] > 1:
            pool = layers.MaxPooling2D if p["pooling"] == "max" else layers.AveragePooling2D
            model.add(pool(pool_size=p["poolSize"]))
    if p["head"] == "dense":
        model.add(layers.Flatten())
        if not units and p["dropout"] > 0:
            model.add(layers.Dropout(p["dropout"]))
        for u in units:
            model.add(layers.Dense(u))
            model.add(activation_layer(p))
            if p["dropout"] > 0:
                model.add(layers.Dropout(p["dropout"]))
    else:
        model.add(layers.GlobalAveragePooling2D())
        if p["dropout"] > 0:
            model.add(layers.Dropout(p["dropout"]))
    outputs = 1 if p["output"] == "sigmoid" else classes
    model.add(layers.Dense(outputs, activation=p["output"]))
    return model


# name, cnnd hyperparameters, input (height, width, channels), classes
CASES = [
    # The seed notebook's digit model as Keras builds it by default: valid padding, biases
    # on every convolution, Glorot weights; conv -> batch norm -> ReLU -> max-pool twice,
    # dense 128 with dropout, softmax.
    (
        "notebook_mnist",
        {
            "filters": [32, 64],
            "padding": "valid",
            "convBias": "always",
            "weightInit": "glorot_uniform",
            "adamEpsilon": 1e-7,
        },
        (28, 28, 1),
        10,
    ),
    # The notebook's happy/unhappy faces model: three blocks on 64x64 colour, one sigmoid
    # unit.
    (
        "notebook_faces",
        {
            "filters": [16, 32, 64],
            "padding": "valid",
            "convBias": "always",
            "units": 64,
            "output": "sigmoid",
            "weightInit": "glorot_uniform",
        },
        (64, 64, 3),
        2,
    ),
    # cnnd's default model: same padding, no bias under batch norm, filters doubling.
    ("cnnd_default", {}, (28, 28, 1), 10),
    # GAP head, a kernel per block, strided convolutions instead of pooling.
    (
        "gap_strided",
        {
            "head": "gap",
            "kernelSizes": [5, 3, 3],
            "baseFilters": 8,
            "strides": 2,
            "poolSize": 1,
            "dropout": 0.25,
        },
        (32, 32, 3),
        10,
    ),
    # No batch norm (biases), two hidden layers, leaky ReLU, even kernels with valid padding,
    # average pooling 3x3.
    (
        "two_hidden_leaky",
        {
            "batchNorm": False,
            "units": [256, 128],
            "activation": "leaky_relu",
            "leakySlope": 0.3,
            "kernelSize": 4,
            "padding": "valid",
            "pooling": "avg",
            "poolSize": 3,
            "filters": [12, 24],
        },
        (48, 48, 1),
        5,
    ),
    # Flatten straight to the output, ReLU6, no dropout, biases under batch norm.
    (
        "no_hidden_relu6",
        {
            "units": [],
            "activation": "relu6",
            "dropout": 0.0,
            "convBias": "always",
            "blocks": 3,
            "baseFilters": 4,
        },
        (28, 28, 1),
        10,
    ),
]


def record(name, fixed, input_shape, classes):
    model = keras_model(fixed, input_shape, classes)
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    non_trainable = sum(int(w.numpy().size) for w in model.non_trainable_weights)
    return {
        "name": name,
        "fixed": fixed,
        "input": list(input_shape),
        "classes": classes,
        "total": int(model.count_params()),
        "trainable": trainable,
        "nonTrainable": non_trainable,
        "layers": [
            {
                "class": type(layer).__name__,
                "outputShape": [d for d in layer.output.shape[1:]],
                "parameters": int(layer.count_params()),
            }
            for layer in model.layers
        ],
    }


def main():
    cases = [record(*c) for c in CASES]
    json.dump(
        {
            "recordedWith": f"keras {keras.__version__} ({keras.backend.backend()} backend)",
            "script": "bench/keras_models.py",
            "cases": cases,
        },
        sys.stdout,
        indent=1,
    )
    print()


if __name__ == "__main__":
    main()
