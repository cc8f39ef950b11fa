"""What a run writes besides its checkpoints: sample grids of the student and the teacher,
and the student model folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engine.diffusion.sampling import ddim_sample, multistep_sample
from engine.diffusion.schedule import ddim_timesteps, timestep_tensor
from engine.distill.data import sample_prompts
from engine.distill.networks import add_lora, cfg_x0_function, lora_layers, merged_unet
from engine.distill.run_folder import export_student, save_grid
from engine.runtime.lora_files import write_lora_file

if TYPE_CHECKING:
    from engine.distill.trainer import DistillTrainer

SAMPLE_SEED = 1000  # sample grids use seeds 1000, 1001, ... so frames compare across steps


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
        if trainer.config.lora_rank:  # also a LoRA file other tools load over the teacher
            write_lora_file(trainer.run.lora_path, lora_layers(unet),
                            alpha=float(trainer.config.lora_rank))
        export_student(trainer.run.student_dir, trainer.parts.model_dir, merged_unet(unet),
                       student_json)
    accelerator.wait_for_everyone()
