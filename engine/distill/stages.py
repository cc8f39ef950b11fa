"""Run stages around the training loop: cached inputs, sample grids, the student export."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engine.api import EngineError
from engine.diffusion.sampling import ddim_sample, multistep_sample
from engine.diffusion.schedule import ddim_timesteps, timestep_tensor
from engine.distill.data import (
    data_folder,
    encode_images,
    epoch_indices,
    load_real_images,
    sample_prompts,
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
from engine.embedded.pack import is_pack, load_pack_latents, pack_manifest

if TYPE_CHECKING:
    from engine.distill.trainer import DistillTrainer

REAL_CACHE_NAME = "real_latents.pt"
SKETCH_CACHE_NAME = "sketch_latents.pt"
SAMPLE_SEED = 1000  # sample grids use seeds 1000, 1001, ... so frames compare across steps


@dataclass
class RunAssets:
    """Inputs computed once per run and cached in the run folder."""

    pairs: RegressionPairs | None = None
    real_latents: torch.Tensor | None = None  # (N, C, H, W) float32, CPU (GAN)
    real_captions: list[str] = field(default_factory=list)
    sketch_latents: torch.Tensor | None = None  # (N, C, H, W), aligned with real_captions
    has_sketch: torch.Tensor | None = None  # (N,) bool

    @property
    def sketch_ids(self) -> list[int]:
        """Indices of the real entries that have a sketch."""
        return torch.nonzero(self.has_sketch).flatten().tolist()

    def real_batch(self, position: int, batch: int, rank: int, world: int, encode,
                   seed: int = 0, sketched: int = 0):
        """Real latents, caption embeddings and sketch conditioning (the own sketches of the
        first `sketched` entries, zeros elsewhere; None without sketches) for critic update
        number `position`."""
        ids = epoch_indices(len(self.real_captions), batch, position, seed, rank, world,
                            stream="real")
        index = torch.tensor(ids)
        text = encode([self.real_captions[i] for i in ids])
        conditioning = None
        if self.sketch_latents is not None:
            keep = self.has_sketch[index] & (torch.arange(batch) < sketched)
            conditioning = torch.where(keep.view(-1, 1, 1, 1), self.sketch_latents[index], 0.0)
            conditioning = conditioning.to(text.token_states.device)
        latents = self.real_latents[index].to(text.token_states.device)
        return latents, text, conditioning


def real_data_folder(config) -> Path | None:
    """The real images of the GAN (see data_folder); an error if it is on and there are none."""
    if not config.uses_gan:
        return None
    folder = data_folder(config)
    if folder is None:
        raise EngineError("--gan-weight needs real images; pass --real-data DIR (an emoji "
                          "dataset folder or images with .txt captions).")
    return folder


def prepare_assets(trainer: DistillTrainer) -> RunAssets:
    """Stage: regression pairs (DMD), real latents (DMD2 GAN) and sketch latents (sketch
    conditioning), made by the main process."""
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
                                          trainer.device, progress=progress,
                                          batch=256 if trainer.device.type == "cuda" else 16)
            save_pairs(run.path, pairs)
        accelerator.wait_for_everyone()
        assets.pairs = load_cached_pairs(run.path, meta)
    real_folder = real_data_folder(config)
    if real_folder is not None or trainer.sketch_fraction > 0:
        cache_real_data(trainer, real_folder or data_folder(config), assets,
                        images=real_folder is not None, sketches=trainer.sketch_fraction > 0)
    teacher_png = run.samples_dir / "teacher.png"
    if config.sample_every and accelerator.is_main_process and not teacher_png.is_file():
        trainer.assets = assets  # the grid's sketch row reads them
        teacher_grid(trainer, teacher_png)
    return assets


def cache_real_data(trainer: DistillTrainer, folder: Path, assets: RunAssets, images: bool,
                    sketches: bool) -> None:
    """Encode the real images (GAN) and/or their sketches once with the teacher's VAE; the
    latents are cached in the run folder and reused on resume."""
    parts, run = trainer.parts, trainer.run
    if is_pack(folder):
        use_pack_latents(trainer, folder, assets, images, sketches)
        return
    meta = {"folder": str(folder.resolve()), "image_size": parts.image_size}
    wanted = [name for name, needed in ((REAL_CACHE_NAME, images), (SKETCH_CACHE_NAME, sketches))
              if needed]
    stale = [name for name in wanted if not cached_real_ok(run.path / name, meta)
             ] if trainer.accelerator.is_main_process else []
    if stale:
        data = load_real_images(folder)
        for name in stale:
            is_sketch = name == SKETCH_CACHE_NAME
            label = "encoding sketches" if is_sketch else "encoding real images"

            def progress(done: int, total: int, label: str = label) -> None:
                trainer.reporter.stage(label, done, total)

            latents = encode_images(parts.vae, data.sketches if is_sketch else data.images,
                                    parts.latent_scale, parts.image_size, trainer.device,
                                    progress=progress)
            saved = {"latents": latents, "captions": data.captions, "meta": meta}
            if is_sketch:
                saved["has_sketch"] = torch.from_numpy(data.has_sketch)
            tmp = (run.path / name).with_suffix(".pt.tmp")
            torch.save(saved, tmp)
            tmp.replace(run.path / name)
    trainer.accelerator.wait_for_everyone()
    for name in wanted:
        saved = torch.load(run.path / name, map_location="cpu", weights_only=True)
        assets.real_captions = list(saved["captions"])
        if name == SKETCH_CACHE_NAME:
            assets.sketch_latents, assets.has_sketch = saved["latents"], saved["has_sketch"]
        else:
            assets.real_latents = saved["latents"]


def use_pack_latents(trainer: DistillTrainer, folder: Path, assets: RunAssets, images: bool,
                     sketches: bool) -> None:
    """Real and sketch latents straight from a latent pack (already encoded, nothing cached)."""
    latents, sketch_latents, captions = load_pack_latents(folder)
    expected = tuple(trainer.latent_shape(1)[1:])
    scale = pack_manifest(folder).get("latent_scale")
    if tuple(latents.shape[1:]) != expected or (
            scale is not None and abs(scale - trainer.parts.latent_scale) > 1e-4 * abs(scale)):
        raise EngineError(f"The latent pack {folder} was encoded for another autoencoder "
                          f"(latents {tuple(latents.shape[1:])}, scale {scale}) than this "
                          f"teacher's ({expected}, scale {trainer.parts.latent_scale}).")
    assets.real_captions = captions
    if images:
        assets.real_latents = latents
    if sketches:
        assets.sketch_latents = sketch_latents
        assets.has_sketch = torch.ones(len(captions), dtype=torch.bool)


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


def sample_sketches(trainer: DistillTrainer, count: int) -> tuple[list[str], torch.Tensor] | None:
    """Fixed (caption, sketch latent) pairs of the real data, spread evenly, for the sketch row
    of the sample grids; None when the run has no sketch conditioning."""
    assets = trainer.assets
    if assets is None or assets.sketch_latents is None or not trainer.sketch_fraction:
        return None
    ids = sample_prompts(assets.sketch_ids, count)
    return [assets.real_captions[i] for i in ids], assets.sketch_latents[torch.tensor(ids)]


def grid_rows(trainer: DistillTrainer, prompts: list[str], sample) -> torch.Tensor:
    """Images of sample(text, conditioning, x_start, generator) for the fixed prompts, then,
    with sketch conditioning, for fixed (caption, sketch) pairs: the same seeds in both rows."""
    rows = [(prompts, None)]
    sketches = sample_sketches(trainer, len(prompts))
    if sketches is not None:
        rows.append(sketches)
    images = []
    for captions, conditioning in rows:
        x_start, generator = fixed_noise(trainer, len(captions))
        if conditioning is not None:
            conditioning = conditioning.to(trainer.device)
        latents = sample(trainer.encode(captions), conditioning, x_start.to(trainer.device),
                         generator)
        images.append(decode(trainer, latents))
    return torch.cat(images)


@torch.no_grad()
def sample_grid(trainer: DistillTrainer, prompts: list[str], path: Path) -> None:
    """The student's images for the fixed prompts and seeds (and sketches, when the run has
    sketch conditioning); every rank runs, main saves."""
    def sample(text, conditioning, x_start, generator):
        def x0_fn(x_t: torch.Tensor, t: int) -> torch.Tensor:
            return trainer.student_x0(x_t.to(trainer.device), timestep_tensor(t, x_t.shape[0]),
                                      text, conditioning)

        def noise_fn(shape: tuple[int, ...]) -> torch.Tensor:
            return torch.randn(shape, generator=generator)

        return multistep_sample(x0_fn, x_start, trainer.timesteps, trainer.schedule, noise_fn)

    images = grid_rows(trainer, prompts, sample)
    if trainer.accelerator.is_main_process:
        save_grid(images, path, columns=len(prompts))


@torch.no_grad()
def teacher_grid(trainer: DistillTrainer, path: Path, ddim_steps: int = 25) -> None:
    """The teacher's DDIM + CFG images for the same prompts, sketches and seeds."""
    timesteps = ddim_timesteps(ddim_steps, trainer.schedule.num_train_timesteps)

    def sample(text, conditioning, x_start, generator):
        x0_cfg = cfg_x0_function(trainer.teacher, trainer.schedule, text, trainer.uncond,
                                 conditioning, trainer.config.guidance)

        def x0_fn(x_t: torch.Tensor, t: int) -> torch.Tensor:
            return x0_cfg(x_t, timestep_tensor(t, x_t.shape[0]))

        return ddim_sample(x0_fn, x_start, timesteps, trainer.schedule)

    prompts = sample_prompts(trainer.prompts, trainer.config.sample_count)
    save_grid(grid_rows(trainer, prompts, sample), path, columns=len(prompts))


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
