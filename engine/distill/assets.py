"""A run's inputs made once and cached in its run folder: regression pairs, real and sketch
latents."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.api import EngineError
from engine.distill.config import DistillConfig
from engine.distill.data import data_folder, encode_images, epoch_indices, load_real_images
from engine.distill.networks import ScoreNetwork
from engine.distill.progress import ProgressReporter
from engine.distill.regression import (
    RegressionPairs,
    load_cached_pairs,
    make_regression_pairs,
    pairs_meta,
    save_pairs,
)
from engine.distill.run_folder import RunFolder
from engine.embedded.pack import is_pack, load_pack_latents, pack_manifest
from engine.runtime.loading import PipelineParts

REAL_CACHE_NAME = "real_latents.pt"
SKETCH_CACHE_NAME = "sketch_latents.pt"


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


def real_data_folder(config: DistillConfig) -> Path | None:
    """The real images of the GAN (see data_folder); an error if it is on and there are none."""
    if not config.uses_gan:
        return None
    folder = data_folder(config)
    if folder is None:
        raise EngineError("--gan-weight needs real images; pass --real-data DIR (an emoji "
                          "dataset folder or images with .txt captions).")
    return folder


def prepare_assets(config: DistillConfig, run: RunFolder, parts: PipelineParts,
                   teacher: ScoreNetwork, prompts: list[str], sketch_fraction: float,
                   accelerator, reporter: ProgressReporter) -> RunAssets:
    """Regression pairs (DMD sec. 3.3), real latents (DMD2's GAN) and sketch latents (sketch
    conditioning), made by the main process, cached in the run folder, read by every rank."""
    assets = RunAssets()
    device = accelerator.device
    latent_shape = (parts.latent_channels, parts.latent_size, parts.latent_size)
    if config.uses_regression:
        meta = pairs_meta(config.teacher, config.regression_pairs, config.regression_ddim_steps,
                          config.guidance, config.seed, latent_shape)
        if accelerator.is_main_process and load_cached_pairs(run.path, meta) is None:
            def progress(done: int, total: int) -> None:
                reporter.stage("making regression pairs", done, total)

            reporter.stage("making regression pairs", 0, config.regression_pairs)
            pairs = make_regression_pairs(teacher, parts.schedule, parts.text_encoder, prompts,
                                          meta, device, progress=progress,
                                          batch=256 if device.type == "cuda" else 16)
            save_pairs(run.path, pairs)
        accelerator.wait_for_everyone()
        assets.pairs = load_cached_pairs(run.path, meta)
    real_folder = real_data_folder(config)
    if real_folder is not None or sketch_fraction > 0:
        folder = real_folder or data_folder(config)
        images, sketches = real_folder is not None, sketch_fraction > 0
        if is_pack(folder):
            use_pack_latents(folder, parts, assets, images, sketches)
        else:
            cache_real_data(folder, run, parts, accelerator, reporter, assets, images, sketches)
    return assets


def cache_real_data(folder: Path, run: RunFolder, parts: PipelineParts, accelerator,
                    reporter: ProgressReporter, assets: RunAssets, images: bool,
                    sketches: bool) -> None:
    """Encode the real images (GAN) and/or their sketches once with the teacher's VAE; the
    latents are cached in the run folder and reused on resume."""
    meta = {"folder": str(folder.resolve()), "image_size": parts.image_size}
    wanted = [name for name, needed in ((REAL_CACHE_NAME, images), (SKETCH_CACHE_NAME, sketches))
              if needed]
    stale = [name for name in wanted if not cached_real_ok(run.path / name, meta)
             ] if accelerator.is_main_process else []
    if stale:
        data = load_real_images(folder)
        for name in stale:
            is_sketch = name == SKETCH_CACHE_NAME
            label = "encoding sketches" if is_sketch else "encoding real images"

            def progress(done: int, total: int, label: str = label) -> None:
                reporter.stage(label, done, total)

            latents = encode_images(parts.vae, data.sketches if is_sketch else data.images,
                                    parts.latent_scale, parts.image_size, accelerator.device,
                                    progress=progress)
            saved = {"latents": latents, "captions": data.captions, "meta": meta}
            if is_sketch:
                saved["has_sketch"] = torch.from_numpy(data.has_sketch)
            tmp = (run.path / name).with_suffix(".pt.tmp")
            torch.save(saved, tmp)
            tmp.replace(run.path / name)
    accelerator.wait_for_everyone()
    for name in wanted:
        saved = torch.load(run.path / name, map_location="cpu", weights_only=True)
        assets.real_captions = list(saved["captions"])
        if name == SKETCH_CACHE_NAME:
            assets.sketch_latents, assets.has_sketch = saved["latents"], saved["has_sketch"]
        else:
            assets.real_latents = saved["latents"]


def use_pack_latents(folder: Path, parts: PipelineParts, assets: RunAssets, images: bool,
                     sketches: bool) -> None:
    """Real and sketch latents straight from a latent pack (already encoded, nothing cached)."""
    latents, sketch_latents, captions = load_pack_latents(folder)
    expected = (parts.latent_channels, parts.latent_size, parts.latent_size)
    scale = pack_manifest(folder).get("latent_scale")
    if tuple(latents.shape[1:]) != expected or (
            scale is not None and abs(scale - parts.latent_scale) > 1e-4 * abs(scale)):
        raise EngineError(f"The latent pack {folder} was encoded for another autoencoder "
                          f"(latents {tuple(latents.shape[1:])}, scale {scale}) than this "
                          f"teacher's ({expected}, scale {parts.latent_scale}).")
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
