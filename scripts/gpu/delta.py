"""Carry UNet weights to and from a remote GPU host in less room: xz files and fp16 deltas.

A fine-tuned student differs from its teacher by ~5% of each weight, so its fp16 difference
compresses to 25 MB where the weights themselves take 31 MB (xz); teacher + delta rebuilds
the student to fp16 rounding. Weights may be diffusers UNet files or a distill checkpoint's
model.safetensors (keys prefixed "unet.", fp32).

python scripts/gpu/delta.py xz FILE OUT.xz             compress one file
python scripts/gpu/delta.py unxz IN.xz OUT             decompress it
python scripts/gpu/delta.py delta BASE NEW OUT.xz      (NEW - BASE) in fp16, xz
python scripts/gpu/delta.py apply BASE DELTA.xz OUT    BASE + delta as fp16 UNet weights
"""

from __future__ import annotations

import argparse
import lzma
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load, load_file, save

UNET_PREFIX = "unet."


def unet_weights(path: Path) -> dict[str, torch.Tensor]:
    """A UNet's weights by diffusers name, from a UNet file or a checkpoint's student."""
    state = load_file(str(path))
    if any(key.startswith(UNET_PREFIX) for key in state):
        state = {key[len(UNET_PREFIX):]: value for key, value in state.items()
                 if key.startswith(UNET_PREFIX)}
    return state


def write_atomic(data: bytes, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.with_name(out.name + ".tmp")
    temp.write_bytes(data)
    os.replace(temp, out)


def weight_delta(base: dict, new: dict) -> dict[str, torch.Tensor]:
    if base.keys() != new.keys():
        raise SystemExit("the two weight files hold different tensors")
    return {key: (new[key].half().float() - base[key].float()).half().contiguous()
            for key in new}  # from the fp16 weights a model folder would hold


def applied(base: dict, delta: dict) -> dict[str, torch.Tensor]:
    if base.keys() != delta.keys():
        raise SystemExit("the delta does not fit these base weights")
    return {key: (base[key].float() + delta[key].float()).half().contiguous() for key in base}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("xz", "unxz", "delta", "apply"))
    parser.add_argument("paths", nargs="+", type=Path)
    args = parser.parse_args(argv)
    paths = args.paths
    if len(paths) != (2 if args.command in ("xz", "unxz") else 3):
        parser.error(f"{args.command}: wrong number of paths (see --help)")
    if args.command == "xz":
        write_atomic(lzma.compress(paths[0].read_bytes(), preset=6), paths[1])
    elif args.command == "unxz":
        write_atomic(lzma.decompress(paths[0].read_bytes()), paths[1])
    elif args.command == "delta":
        delta = weight_delta(unet_weights(paths[0]), unet_weights(paths[1]))
        write_atomic(lzma.compress(save(delta), preset=6), paths[2])
    else:
        delta = load(lzma.decompress(paths[1].read_bytes()))
        write_atomic(save(applied(unet_weights(paths[0]), delta)), paths[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
