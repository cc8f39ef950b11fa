"""Scores of generated images in the evaluator's space: FD, caption alignment, top-5 retrieval."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from engine.eval.evaluator import Evaluator, images_to_tensor


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))  (Heusel et al. 2017, eq. 6).

    Tr((S_a S_b)^(1/2)) is computed as the sum of the square roots of the eigenvalues of the
    symmetric PSD matrix S_a^(1/2) S_b S_a^(1/2), which is stable for singular covariances.
    """
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    values, vectors = np.linalg.eigh(cov_a)
    sqrt_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = np.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a)
    trace_sqrt = np.sqrt(np.clip(middle, 0, None)).sum()
    distance = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt
    return max(float(distance), 0.0)  # rounding can leave -1e-14 for identical sets


@torch.no_grad()
def image_features(evaluator: Evaluator, images_uint8: np.ndarray, batch: int = 64):
    """(features, normalised image embeddings) of uint8 NHWC images."""
    features, embeddings = [], []
    for start in range(0, len(images_uint8), batch):
        x = images_to_tensor(images_uint8[start:start + batch])
        f = evaluator.features(x)
        features.append(f)
        embeddings.append(torch.nn.functional.normalize(evaluator.image_projection(f), dim=-1))
    return torch.cat(features).numpy(), torch.cat(embeddings)


@torch.no_grad()
def alignment_scores(image_emb: torch.Tensor, text_emb: torch.Tensor, k: int = 5) -> dict:
    """Mean cosine of each image with its own caption; top-k retrieval among all captions."""
    similarity = image_emb @ text_emb.T
    own = similarity.diagonal()
    rank = (similarity > own[:, None]).sum(1)  # captions scoring strictly higher than the right one
    return {"alignment": float(own.mean()), f"top{k}": float((rank < k).float().mean()),
            "top1": float((rank < 1).float().mean())}


def score_images(evaluator: Evaluator, images_uint8: np.ndarray, pooled_text: torch.Tensor,
                 reference_uint8: np.ndarray) -> dict:
    """fd against the reference images, alignment and top5 against the captions."""
    features, image_emb = image_features(evaluator, images_uint8)
    reference_features, _ = image_features(evaluator, reference_uint8)
    with torch.no_grad():
        text_emb = evaluator.embed_texts(pooled_text)
    return {"fd": frechet_distance(features, reference_features),
            **alignment_scores(image_emb, text_emb)}


def generate_images(generate_one: Callable[..., np.ndarray], captions: list[str],
                    seed: int = 0, sketches: np.ndarray | None = None
                    ) -> tuple[np.ndarray, float]:
    """Images for every caption (seed + index), each drawn over its sketch when sketches are
    given, and the mean seconds per image."""
    images = []
    start = time.perf_counter()
    for index, caption in enumerate(captions):
        extra = {} if sketches is None else {"sketch": sketches[index]}
        images.append(generate_one(caption, seed + index, **extra))
    seconds = (time.perf_counter() - start) / max(len(captions), 1)
    return np.stack(images), seconds


def pipeline_generator(model: str, steps: int | None = None, teacher_steps: int = 0,
                       guidance: float = 4.0, device: str = "cpu", size: int = 128,
                       backend: str = "torch", timesteps: list[int] | None = None,
                       sketches: bool = False, match_prompt: bool = True
                       ) -> tuple[Callable[..., np.ndarray], int]:
    """(generate_one(caption, seed, sketch=None) over the engine's Generator, the student
    steps it uses: `steps`, or the count the student was distilled for); `timesteps` replaces
    the student's own schedule (student.json "timesteps") for this run; `sketches` asks for a
    model conditioned on sketches (an error for one without sketch channels)."""
    from PIL import Image

    from engine.api import GenerateRequest
    from engine.pipeline.generator import Generator
    from engine.runtime import create_backend

    generator = Generator(create_backend(model, backend, device))
    if sketches and not generator.backend.conditioning_channels:
        from engine.api import EngineError

        raise EngineError(f"{model} has no sketch channels; --sketch scores models that draw "
                          "from a sketch (the embedded teacher and student do).")
    if timesteps:
        generator.default_timesteps = list(timesteps)
    steps = steps or generator.default_steps

    def generate_one(caption: str, seed: int, sketch: np.ndarray | None = None) -> np.ndarray:
        if sketch is not None and sketch.ndim == 2:
            sketch = np.repeat(sketch[..., None], 3, axis=-1)
        request = GenerateRequest(prompt=caption, seed=seed, steps=steps, sketch=sketch,
                                  teacher_steps=teacher_steps, guidance=guidance,
                                  match_prompt=match_prompt)
        image, _ = generator.generate(request)
        if image.shape[0] != size:
            resized = Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS)
            image = np.asarray(resized)
        return image

    # whether prompts are drawn as the model's nearest training prompt (it has a vocabulary)
    generate_one.prompt_matching = match_prompt and generator.vocabulary is not None
    return generate_one, steps
