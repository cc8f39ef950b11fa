"""Teacher regression pairs for the DMD regression loss (DMD sec. 3.3), made once and cached.

Each pair is (noise, prompt, x0_ref): x0_ref is the teacher's deterministic DDIM sample
with classifier-free guidance from that noise, so the student learns the teacher's
noise -> image layout. The cache lives in the run folder and is reused on resume.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.diffusion.sampling import ddim_sample
from engine.diffusion.schedule import NoiseSchedule, ddim_timesteps, timestep_tensor
from engine.distill.data import step_generator
from engine.distill.networks import ScoreNetwork, cfg_x0_function
from engine.runtime.text import TextEmbedding, TextEncoder

CACHE_NAME = "regression_pairs.pt"


@dataclass
class RegressionPairs:
    """Cached teacher samples: noise (N, C, H, W), prompts (N,), x0 (N, C, H, W)."""

    noise: torch.Tensor
    prompts: list[str]
    x0: torch.Tensor
    meta: dict

    def __len__(self) -> int:
        return len(self.prompts)


def pairs_meta(teacher: str, count: int, ddim_steps: int, guidance: float, seed: int,
               latent_shape: tuple[int, ...]) -> dict:
    """What a cache must match to be reused."""
    return {"teacher": teacher, "count": count, "ddim_steps": ddim_steps,
            "guidance": guidance, "seed": seed, "latent_shape": list(latent_shape)}


def load_cached_pairs(run_dir: Path, meta: dict) -> RegressionPairs | None:
    path = Path(run_dir) / CACHE_NAME
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a torn or foreign file is simply remade
        return None
    if saved.get("meta") != meta:
        return None
    return RegressionPairs(saved["noise"], list(saved["prompts"]), saved["x0"], saved["meta"])


@torch.no_grad()
def make_regression_pairs(teacher: ScoreNetwork, schedule: NoiseSchedule,
                          text_encoder: TextEncoder, prompts: list[str], meta: dict,
                          device: torch.device, batch: int = 16,
                          progress: Callable[[int, int], None] | None = None) -> RegressionPairs:
    """Run the teacher's DDIM + CFG sampler on seeded (noise, prompt) pairs (DMD sec. 3.3)."""
    count, seed = int(meta["count"]), int(meta["seed"])
    generator = step_generator(seed, 0, "regression-pairs")
    prompt_order = torch.randint(0, len(prompts), (count,), generator=generator)
    pair_prompts = [prompts[int(i)] for i in prompt_order]
    noise = torch.randn((count, *meta["latent_shape"]), generator=generator)
    uncond = text_encoder.encode([""]).to(device, torch.float32)
    timesteps = ddim_timesteps(int(meta["ddim_steps"]), schedule.num_train_timesteps)
    outputs = []
    for start in range(0, count, batch):
        chunk_prompts = pair_prompts[start:start + batch]
        text = text_encoder.encode(chunk_prompts).to(device, torch.float32)
        x0_fn = cfg_x0_function(teacher, schedule, text, uncond, None, float(meta["guidance"]))

        def sampler_x0(x_t: torch.Tensor, t: int, x0_fn=x0_fn) -> torch.Tensor:
            return x0_fn(x_t, timestep_tensor(t, x_t.shape[0], x_t.device))

        x_start = noise[start:start + batch].to(device)
        outputs.append(ddim_sample(sampler_x0, x_start, timesteps, schedule).float().cpu())
        if progress:
            progress(min(start + batch, count), count)
    return RegressionPairs(noise, pair_prompts, torch.cat(outputs), meta)


def save_pairs(run_dir: Path, pairs: RegressionPairs) -> None:
    path = Path(run_dir) / CACHE_NAME
    tmp = path.with_suffix(".pt.tmp")
    torch.save({"noise": pairs.noise, "prompts": pairs.prompts, "x0": pairs.x0,
                "meta": pairs.meta}, tmp)
    tmp.replace(path)


def regression_batch(pairs: RegressionPairs, indices: list[int],
                     encode: Callable[[list[str]], TextEmbedding], device: torch.device
                     ) -> tuple[torch.Tensor, TextEmbedding, torch.Tensor]:
    """(noise, text, x0_ref) for the given pair indices, on device; encode(prompts) gives
    the text on device in float32."""
    index = torch.tensor(indices)
    text = encode([pairs.prompts[i] for i in indices])
    return pairs.noise[index].to(device), text, pairs.x0[index].to(device)
