#!/usr/bin/env python3
"""Saves torchvision's pretrained ImageNet weights of a backbone as safetensors, for cnnd's
`initFrom`.

A sweep with `"arch": "resnet18", "initFrom": "file:pretrained/resnet18.safetensors"` (or
`mobilenet_v2`) starts from torchvision's ImageNet weights when that file is under the
daemon's data directory. cnnd does not download them; make the file once, on a machine with
internet access (torchvision downloads from download.pytorch.org into ~/.cache/torch):

    scripts/setup.sh        # once: makes the torchvision environment, $CNND_TORCHVISION_PY
    source scripts/env.sh
    mkdir -p DATA_DIR/pretrained
    "$CNND_TORCHVISION_PY" scripts/convert-torchvision-weights.py resnet18 \\
        DATA_DIR/pretrained/resnet18.safetensors
    "$CNND_TORCHVISION_PY" scripts/convert-torchvision-weights.py mobilenet_v2 \\
        DATA_DIR/pretrained/mobilenet_v2.safetensors

DATA_DIR is the daemon's data directory (--data-dir / $CNND_DATA_DIR). The weights are
`torchvision.models.get_model(arch, weights="DEFAULT")` (resnet18: IMAGENET1K_V1,
mobilenet_v2: IMAGENET1K_V2), written as the model's state_dict under torchvision's names
(batch norms' running statistics and num_batches_tracked included), every tensor contiguous.
They expect images normalised with ImageNet's mean and std, which cnnd does for these archs.
"""

import argparse
import json
import os
import sys

import torch
import torchvision
from safetensors.torch import save_file

ARCHS = ("resnet18", "mobilenet_v2")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Run with $CNND_TORCHVISION_PY (scripts/env.sh; scripts/setup.sh makes it).",
    )
    ap.add_argument("arch", choices=ARCHS)
    ap.add_argument("out", metavar="OUT.safetensors", help="file to write (its folder must exist)")
    # Untrained weights instead of the download: tests the saving path without internet.
    ap.add_argument("--random", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.random:
        torch.manual_seed(0)
        model = torchvision.models.get_model(args.arch, weights=None)
        source = "random (weights=None)"
    else:
        weights = torchvision.models.get_model_weights(args.arch).DEFAULT
        try:
            model = torchvision.models.get_model(args.arch, weights=weights)
        except OSError as e:  # urllib's URLError included
            print(f"convert-torchvision-weights: cannot download {weights.url} "
                  f"(this needs internet access to download.pytorch.org): {e}", file=sys.stderr)
            return 1
        source = f"{type(weights).__name__}.{weights.name}"
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tmp = args.out + ".part"
    save_file(state, tmp, metadata={"arch": args.arch, "source": source,
                                    "torchvision": torchvision.__version__})
    os.replace(tmp, args.out)
    print(json.dumps({
        "arch": args.arch,
        "weights": source,
        "out": args.out,
        "tensors": len(state),
        "parameters": sum(p.numel() for p in model.parameters()),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
