"""How much of the input noise a one-step student passes into its image, and what removing
it would be worth (a diagnostic; nothing here is used by the engine).

python scripts/noise_leak.py [--student DIR] [--teacher DIR] [--captions 24]
-> the high-pass energy of the one-step latent and of the teacher's 20-step latent, the
   cosine of each high-pass with the starting noise's, and held-out fd / alignment of the
   one-step images as they are, with half a blur, and with the noise-correlated part removed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def high_pass(latent: torch.Tensor) -> torch.Tensor:
    """latent minus its 3x3 binomial blur (edges replicated)."""
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None]) / 16
    kernel = kernel.expand(latent.shape[1], 1, 3, 3)
    blurred = F.conv2d(F.pad(latent, (1, 1, 1, 1), mode="replicate"), kernel,
                       groups=latent.shape[1])
    return latent - blurred


def leak_stats(latent: torch.Tensor, noise: torch.Tensor) -> tuple[float, float]:
    detail, noise_detail = high_pass(latent), high_pass(noise)
    cosine = F.cosine_similarity(detail.flatten(), noise_detail.flatten(), dim=0)
    return detail.pow(2).mean().item(), cosine.item()


def main() -> int:
    from engine.embedded.dataset import load_dataset
    from engine.embedded.latents import encode_captions, load_minilm
    from engine.eval.evaluator import load_evaluator
    from engine.eval.metrics import score_images
    from engine.pipeline.generator import Generator, tensor_to_image
    from engine.pipeline.sampling import ddim_sample
    from engine.pipeline.schedule import ddim_timesteps
    from engine.runtime import create_backend

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default=str(REPO / "assets/models/student"))
    parser.add_argument("--teacher", default=str(REPO / "assets/models/teacher"))
    parser.add_argument("--data", type=Path, default=REPO / "data" / "emoji")
    parser.add_argument("--evaluator", default=str(REPO / "assets/models/evaluator"))
    parser.add_argument("--captions", type=int, default=24, help="captions for the leak stats")
    args = parser.parse_args()
    data = load_dataset(args.data)
    ids = [i for i, held in enumerate(data.heldout) if held]
    captions = [data.captions[i] for i in ids]
    student = Generator(create_backend(args.student, "torch", "cpu"))
    teacher = Generator(create_backend(args.teacher, "torch", "cpu"))
    top = student.schedule.num_train_timesteps - 1
    shape = (1, student.backend.latent_channels, student.backend.latent_size,
             student.backend.latent_size)
    stats = {"student, 1 step": [], "teacher, 20 DDIM steps + CFG 4": []}
    images = {"as is": [], "half a blur": [], "noise part removed": []}
    uncond = teacher.encode_prompt("")
    with torch.no_grad():
        for index, caption in enumerate(captions):
            noise = student.noise_source(index)(shape)
            latent = student.x0_function(student.encode_prompt(caption), None)(noise, top)
            if index < args.captions:
                guided = teacher.x0_function(teacher.encode_prompt(caption), None, uncond, 4.0)
                reference = ddim_sample(guided, noise, ddim_timesteps(20), teacher.schedule)
                stats["student, 1 step"].append(leak_stats(latent, noise))
                stats["teacher, 20 DDIM steps + CFG 4"].append(leak_stats(reference, noise))
            detail, noise_detail = high_pass(latent), high_pass(noise)
            share = (detail * noise_detail).sum() / noise_detail.pow(2).sum()
            for name, variant in (("as is", latent), ("half a blur", latent - 0.5 * detail),
                                  ("noise part removed", latent - share * noise_detail)):
                images[name].append(tensor_to_image(student.backend.decode(variant)))
    for name, rows in stats.items():
        energy, cosine = np.mean(rows, axis=0)
        print(f"{name}: high-pass energy {energy:.3f}, cosine with the noise's {cosine:.3f}")
    _, pooled = encode_captions(load_minilm(), captions)
    evaluator = load_evaluator(args.evaluator)
    for name, frames in images.items():
        scores = score_images(evaluator, np.stack(frames), pooled, data.images[ids])
        print(f"one step, {name}: fd {scores['fd']:.3f}, alignment {scores['alignment']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
