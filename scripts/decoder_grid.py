"""Two decoders side by side: held-out reconstructions and the same student frames.

python scripts/decoder_grid.py --student assets/models/student --decoder RUN/vae --out docs/NAME.png
-> rows: the real held-out image; its reconstruction through the student's own decoder and
   through --decoder (same encoder: a decoder trained with --frozen-encoder); then the
   student's two-step frame for the caption (seed 0) decoded by each. Prints the held-out
   sharpness and PSNR of both decoders over all held-out images.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from model_grids import heldout_columns, write_grid  # noqa: E402


def with_decoder(student: Path, decoder: Path, folder: Path) -> Path:
    """A model folder linking every part of `student` but its vae, which is `decoder`."""
    for part in student.iterdir():
        if part.name not in ("vae", "onnx", "onnx-fp16", "onnx-int8"):
            (folder / part.name).symlink_to(part.resolve())
    (folder / "vae").symlink_to(decoder.resolve())
    return folder


def main() -> int:
    import torch

    from engine.api import GenerateRequest
    from engine.embedded.autoencoder import (
        evaluate_reconstructions,
        load_autoencoder,
        reconstruct,
        to_uint8,
    )
    from engine.embedded.dataset import load_dataset
    from engine.pipeline.generator import Generator
    from engine.runtime import create_backend

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", type=Path, default=REPO / "assets/models/student")
    parser.add_argument("--decoder", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=REPO / "data" / "emoji")
    args = parser.parse_args()
    data = load_dataset(args.data)
    ids = heldout_columns(data)
    captions = [data.captions[i] for i in ids]
    heldout = torch.from_numpy(data.images[data.heldout])
    rows = [[data.images[i] for i in ids]]
    decoders = [args.student / "vae", args.decoder]
    for path in decoders:
        ae = load_autoencoder(path)
        recon = to_uint8(reconstruct(ae, heldout))
        score, detail = evaluate_reconstructions(ae, heldout)
        print(f"{path}: held-out PSNR {score:.2f} dB, sharpness {detail:.3f}")
        rows.append([recon[list(np.flatnonzero(data.heldout)).index(i)] for i in ids])
    with tempfile.TemporaryDirectory() as temporary:
        folders = [args.student, with_decoder(args.student, args.decoder, Path(temporary))]
        for folder in folders:
            generator = Generator(create_backend(str(folder), "torch", "cpu"))
            rows.append([generator.generate(GenerateRequest(prompt=caption, steps=2))[0]
                         for caption in captions])
    write_grid(rows, captions, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
