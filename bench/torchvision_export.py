#!/usr/bin/env python3
"""Writes a torchvision backbone's weights and one forward pass of it, as the reference for
cnnd's pretrained backbones (`arch: resnet18 | mobilenet_v2`).

The trainer's backbone test (crates/cnnd-worker/tests/backbones.rs) runs this, loads
DIR/weights.safetensors into cnnd's model of the same arch, feeds it DIR/io.safetensors's
`input` and compares cnnd's logits with torchvision's `output` within 1e-4.

    $CNND_TORCHVISION_PY bench/torchvision_export.py --arch resnet18 --out DIR \\
        [--seed 0] [--classes 1000] [--side 64] [--batch 2]

The model is `torchvision.models.<arch>(weights=None, num_classes=classes)` with torch seeded
by --seed (no download). Batch norm is then made non-trivial, so that inference-mode batch
norm is really tested: every BatchNorm's running_mean ~ normal * 0.1, running_var ~
uniform 0.5..1.5, weight ~ uniform 0.5..1.5, bias ~ normal * 0.1. In eval mode,
x = torch.rand(batch, 3, side, side) (pixels 0..1) and output = model((x - mean) / std) with
ImageNet's per-channel mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), in float32.

Writes:
  DIR/weights.safetensors  the model's state_dict under torchvision's names (including the
                           batch norms' num_batches_tracked), every tensor contiguous;
  DIR/io.safetensors       {"input": x (batch, 3, side, side), "output": logits (batch, classes)}
and prints one JSON line: {"arch", "parameters" (sum of numel over model.parameters()),
"buffers_float" (elements of the running_mean and running_var buffers), "output_shape"}.

Needs torch 2.11 and torchvision 0.26: $CNND_TORCHVISION_PY (scripts/env.sh), the environment
scripts/setup.sh makes on top of the shared torch install.
"""

import argparse
import json
import os
import sys

import torch
import torchvision
from safetensors.torch import save_file

ARCHS = ("resnet18", "mobilenet_v2")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", required=True, choices=ARCHS)
    ap.add_argument("--out", required=True, metavar="DIR", help="folder for weights.safetensors and io.safetensors")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes", type=int, default=1000, help="num_classes of the classifier")
    ap.add_argument("--side", type=int, default=64, help="input images are side x side")
    ap.add_argument("--batch", type=int, default=2)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    model = getattr(torchvision.models, args.arch)(weights=None, num_classes=args.classes)
    buffers_float = 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_().mul_(0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_().mul_(0.1)
                buffers_float += m.running_mean.numel() + m.running_var.numel()
    model.eval()

    x = torch.rand(args.batch, 3, args.side, args.side, dtype=torch.float32)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    with torch.no_grad():
        y = model((x - mean) / std)

    os.makedirs(args.out, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(args.out, "weights.safetensors"))
    save_file({"input": x.contiguous(), "output": y.contiguous()}, os.path.join(args.out, "io.safetensors"))

    print(json.dumps({
        "arch": args.arch,
        "parameters": sum(p.numel() for p in model.parameters()),
        "buffers_float": buffers_float,
        "output_shape": list(y.shape),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
