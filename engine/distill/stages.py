"""Run stages around the training loop: cached inputs, sample grids, the student export."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engine.api import EngineError
from engine.distill.data import (
    EMBEDDED_DATA_DIR,
    EMBEDDED_TEACHERS,
    encode_images,
    epoch_indices,
    load_real_images,
)
from engine.distill.networks import add_lora, cfg_x0_function, merged_unet
from engine.distill.regression import (
    RegressionPairs,
    load_cached_pairs,
    make_regression_pairs,
    pairs_meta,
    save_pairs,
)
from engine.distill.run_folder import export_student, save_grid
from engine.pipeline.sampling import ddim_sample, multistep_sample
from engine.pipeline.schedule import ddim_timesteps

if TYPE_CHECKING:
    from engine.distill.trainer import DistillTrainer

REAL_CACHE_NAME = "real_latents.pt"
SAMPLE_SEED = 1000  # sample grids use seeds 1000, 1001, ... so frames compare across steps


@dataclass
class RunAssets:
    """Inputs computed once per run and cached in the run folder."""

    pairs: RegressionPairs | None = None
    real_latents: torch.Tensor | None = None  # (N, C, H, W) float32, CPU
    real_captions: list[str] = field(default_factory=list)

    def real_batch(self, position: int, batch: int, rank: int, world: int, encode,
                   seed: int = 0):
        """Real latents and their caption embeddings for critic update number `position`."""
        ids = epoch_indices(len(self.real_captions), batch, position, seed, rank, world,
                            stream="real")
        latents = self.real_latents[torch.tensor(ids)]
        text = encode([self.real_captions[i] for i in ids])
        return latents.to(text.token_states.device), text


def real_data_folder(config) -> Path | None:
    """--real-data, else the emoji dataset for the embedded teacher; an error if the GAN
    is on and there is neither."""
    if not config.uses_gan:
        return None
    if config.real_data:
        return Path(config.real_data)
    if config.teacher in EMBEDDED_TEACHERS and (EMBEDDED_DATA_DIR / "manifest.json").is_file():
        return EMBEDDED_DATA_DIR
    raise EngineError("--gan-weight needs real images; pass --real-data DIR (an emoji dataset "
                      "folder or images with .txt captions).")


def prepare_assets(trainer: DistillTrainer) -> RunAssets:
    """Stage: regression pairs (DMD) and real latents (DMD2 GAN), made by the main process."""
    config, accelerator, run = trainer.config, trainer.accelerator, trainer.run
    assets = RunAssets()
    if config.uses_regression:
        meta = pairs_meta(config.teacher, config.regression_pairs, config.regression_ddim_steps,
                          config.guidance, config.seed, trainer.latent_shape(1)[1:])
        if accelerator.is_main_process and load_cached_pairs(run.path, meta) is None:
            def progress(done: int, total: int) -> None:
                trainer.reporter.stage("making regression pairs", done, total)

            trainer.reporter.stage("making regression pairs", 0, config.regression_pairs)
            pairs = make_regression_pairs(trainer.teacher, trainer.schedule,
                                          trainer.parts.text_encoder, trainer.prompts, meta,
                                          trainer.device, progress=progress)
            save_pairs(run.path, pairs)
        accelerator.wait_for_everyone()
        assets.pairs = load_cached_pairs(run.path, meta)
    folder = real_data_folder(config)
    if folder is not None:
        cache = run.path / REAL_CACHE_NAME
        meta = {"folder": str(folder.resolve()), "image_size": trainer.parts.image_size}
        if accelerator.is_main_process and not cached_real_ok(cache, meta):
            images, captions = load_real_images(folder)

            def progress(done: int, total: int) -> None:
                trainer.reporter.stage("encoding real images", done, total)

            latents = encode_images(trainer.parts.vae, images, trainer.parts.latent_scale,
                                    trainer.parts.image_size, trainer.device, progress=progress)
            tmp = cache.with_suffix(".pt.tmp")
            torch.save({"latents": latents, "captions": captions, "meta": meta}, tmp)
            tmp.replace(cache)
        accelerator.wait_for_everyone()
        saved = torch.load(cache, map_location="cpu", weights_only=True)
        assets.real_latents, assets.real_captions = saved["latents"], list(saved["captions"])
    teacher_png = run.samples_dir / "teacher.png"
    if config.sample_every and accelerator.is_main_process and not teacher_png.is_file():
        teacher_grid(trainer, teacher_png)
    return assets


def cached_real_ok(cache: Path, meta: dict) -> bool:
    if not cache.is_file():
        return False
    try:
        return torch.load(cache, map_location="cpu", weights_only=True).get("meta") == meta
    except Exception:  # noqa: BLE001 - a torn file is remade
        return False


def fixed_noise(trainer: DistillTrainer, count: int) -> tuple[torch.Tensor, torch.Generator]:
    generator = torch.Generator("cpu").manual_seed(SAMPLE_SEED)
    return torch.randn(trainer.latent_shape(count), generator=generator), generator


def decode(trainer: DistillTrainer, latents: torch.Tensor) -> torch.Tensor:
    vae = trainer.parts.vae
    dtype = next(vae.parameters()).dtype
    return vae.decode((latents / trainer.parts.latent_scale).to(trainer.device, dtype)).sample


@torch.no_grad()
def sample_grid(trainer: DistillTrainer, prompts: list[str], path: Path) -> None:
    """The student's images for the fixed prompts and seeds (every rank runs; main saves)."""
    text = trainer.encode(prompts)
    x_start, generator = fixed_noise(trainer, len(prompts))

    def x0_fn(x_t: torch.Tensor, t: int) -> torch.Tensor:
        return trainer.student_x0(x_t.to(trainer.device), trainer.full_t(t, x_t.shape[0]), text)

    def noise_fn(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=generator)

    latents = multistep_sample(x0_fn, x_start.to(trainer.device), trainer.timesteps,
                               trainer.schedule, noise_fn)
    images = decode(trainer, latents)
    if trainer.accelerator.is_main_process:
        save_grid(images, path)


@torch.no_grad()
def teacher_grid(trainer: DistillTrainer, path: Path, ddim_steps: int = 25) -> None:
    """The teacher's DDIM + CFG images for the same prompts and seeds, for comparison."""
    from engine.distill.data import sample_prompts

    prompts = sample_prompts(trainer.prompts, trainer.config.sample_count)
    text = trainer.encode(prompts)
    x0_cfg = cfg_x0_function(trainer.teacher, trainer.schedule, text, trainer.uncond, None,
                             trainer.config.guidance)

    def x0_fn(x_t: torch.Tensor, t: int) -> torch.Tensor:
        return x0_cfg(x_t, trainer.full_t(t, x_t.shape[0]))

    x_start, _ = fixed_noise(trainer, len(prompts))
    timesteps = ddim_timesteps(ddim_steps, trainer.schedule.num_train_timesteps)
    latents = ddim_sample(x0_fn, x_start.to(trainer.device), timesteps, trainer.schedule)
    save_grid(decode(trainer, latents), path)


def export_student_folder(trainer: DistillTrainer, student_json: dict) -> None:
    """student/: the merged fp16 student UNet + the teacher's other parts (model-format.md)."""
    from diffusers import UNet2DConditionModel

    accelerator = trainer.accelerator
    state = accelerator.get_state_dict(trainer.student)  # collective under FSDP
    if accelerator.is_main_process:
        source_unet = accelerator.unwrap_model(trainer.student).unet
        unet = UNet2DConditionModel.from_config(dict(source_unet.config))
        if trainer.config.lora_rank:
            add_lora(unet, trainer.config.lora_rank)
        unet.load_state_dict({key.removeprefix("unet."): value.float().cpu()
                              for key, value in state.items()}, strict=True)
        export_student(trainer.run.student_dir, trainer.parts.model_dir, merged_unet(unet),
                       student_json)
    accelerator.wait_for_everyone()
