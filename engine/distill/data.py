"""Training inputs: prompt lists, deterministic per-step randomness, real images for the GAN."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.api import EngineError

REPO_DIR = Path(__file__).resolve().parents[2]
EMBEDDED_DATA_DIR = REPO_DIR / "data" / "emoji"
EMBEDDED_TEACHERS = ("embedded", "embedded-teacher")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SKETCH_FOLDER = "sketches"  # --real-data DIR/sketches/NAME.png: the sketch of DIR/NAME.png
# Prompts per emoji caption in the embedded teacher's default distillation set: the caption
# and two phrasings (11,292 prompts; the caption store keeps them all, see text_cache.py).
DISTILL_PHRASINGS = 3

GENERIC_PROMPTS = [
    "a photograph of a red fox in the snow", "a bowl of ramen, studio lighting",
    "a lighthouse on a cliff at sunset", "a watercolor painting of a sailboat",
    "a cozy reading nook with a cat", "a bustling night market in the rain",
    "a portrait of an astronaut, oil painting", "a mountain lake reflecting pine trees",
    "a vintage red bicycle against a brick wall", "a bowl of fresh strawberries",
    "a futuristic city skyline at dusk", "a golden retriever puppy on the grass",
    "an old stone bridge over a river in autumn", "a cup of coffee on a wooden table",
    "a hot air balloon over green hills", "a macro photo of a dewdrop on a leaf",
    "a medieval castle in the fog", "a pixel art spaceship", "a sunflower field under blue sky",
    "a snowy cabin with warm lights", "a colorful parrot on a branch", "a plate of sushi",
    "a desert with sand dunes at noon", "an owl sitting on a fence at night",
    "a tropical beach with palm trees", "a steam locomotive in the mountains",
    "a glass of orange juice with ice", "a robot reading a book", "a koi pond with lilies",
    "a pencil sketch of an old man", "a dragon made of clouds", "a street in Paris in spring",
]
EMOJI_PROMPTS = [
    "red heart", "grinning face", "rocket", "red apple", "cat face", "dog face", "sun",
    "crescent moon", "star", "pizza", "birthday cake", "rainbow", "fire", "snowflake",
    "alarm clock", "house", "car", "tree", "flower", "thumbs up", "smiling face with sunglasses",
    "ghost", "panda", "banana", "soccer ball", "umbrella", "light bulb", "guitar",
]


# -- prompts ---------------------------------------------------------------------------------
def read_prompts_file(path: Path) -> list[str]:
    """One prompt a line (blank lines and lines starting with # ignored), or a JSON list."""
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix == ".json":
        prompts = [str(p) for p in json.loads(text)]
    else:
        prompts = [line.strip() for line in text.splitlines()
                   if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise EngineError(f"The prompts file {path} holds no prompts.")
    return prompts


def embedded_captions(folder: Path = EMBEDDED_DATA_DIR) -> list[str] | None:
    """Training-split captions of the emoji dataset (the embedded teacher's data), if built."""
    captions_path = folder / "captions.json"
    if not (folder / "manifest.json").is_file() or not captions_path.is_file():
        return None
    captions = json.loads(captions_path.read_text())
    heldout_path = folder / "heldout.npy"
    if heldout_path.is_file():
        heldout = np.load(heldout_path)
        captions = [c for c, held in zip(captions, heldout, strict=False) if not held]
    return sorted(set(captions)) or None


def embedded_prompts(folder: Path = EMBEDDED_DATA_DIR,
                     per_caption: int = DISTILL_PHRASINGS) -> list[str] | None:
    """The embedded teacher's training captions, each with its first per_caption - 1 phrasings
    ("a penguin", "penguin emoji"; never an evaluation prompt), so the student learns what
    people type as well as the names."""
    from engine.embedded.phrases import PHRASE_TABLE, training_phrasings

    captions = embedded_captions(folder)
    if captions is None or not PHRASE_TABLE.is_file():
        return captions
    lists = training_phrasings(captions)
    return sorted({text for texts in lists for text in texts[:per_caption]})


def default_prompts(teacher: str, prompts_file: str | None,
                    real_data: str | None = None) -> list[str]:
    """--prompts FILE, else the training captions of a latent pack given as --real-data, else
    the emoji captions and phrasings for the embedded teacher, else a generic list."""
    from engine.embedded.pack import is_pack, pack_captions

    if prompts_file:
        return read_prompts_file(Path(prompts_file))
    if is_pack(real_data):
        return sorted(set(pack_captions(Path(real_data))))
    if teacher in EMBEDDED_TEACHERS:
        return embedded_prompts() or list(EMOJI_PROMPTS)
    return list(GENERIC_PROMPTS)


def sample_prompts(prompts: list[str], count: int) -> list[str]:
    """Fixed, evenly spread prompts for the sample grids."""
    stride = max(1, len(prompts) // count)
    return [prompts[(i * stride) % len(prompts)] for i in range(count)]


# -- deterministic randomness ----------------------------------------------------------------
def step_generator(seed: int, step: int, stream: str, rank: int = 0) -> torch.Generator:
    """A CPU generator that depends only on (seed, step, stream, rank): resumes replay exactly."""
    digest = hashlib.sha256(f"{seed}:{step}:{stream}:{rank}".encode()).digest()
    return torch.Generator("cpu").manual_seed(int.from_bytes(digest[:8], "big") >> 1)


def epoch_indices(count: int, batch: int, step: int, seed: int, rank: int, world: int,
                  stream: str = "prompts") -> list[int]:
    """Indices for this rank's batch at this step: a fresh permutation per epoch."""
    per_step = batch * world
    start = step * per_step + rank * batch
    orders: dict[int, torch.Tensor] = {}
    indices = []
    for position in range(start, start + batch):
        epoch, offset = divmod(position, count)
        if epoch not in orders:
            orders[epoch] = torch.randperm(count, generator=step_generator(seed, epoch, stream))
        indices.append(int(orders[epoch][offset]))
    return indices


# -- real images (GAN) and their sketches (conditioning channels) ---------------------------
@dataclass
class RealData:
    """Real training images, their captions and (optionally) paired line sketches."""

    images: np.ndarray  # (N, H, W, 3) uint8
    captions: list[str]
    sketches: np.ndarray | None = None  # (N, H, W) or (N, H, W, 3) uint8, aligned with images
    has_sketch: np.ndarray | None = None  # (N,) bool: False where a folder lacks a sketch


def load_real_images(folder: Path) -> RealData:
    """An emoji dataset folder (manifest.json; training split, with its sketches) or image
    files with same-name .txt captions and optional same-name sketches in sketches/."""
    folder = Path(folder)
    if (folder / "manifest.json").is_file():
        from engine.embedded.dataset import load_dataset

        dataset = load_dataset(folder)
        keep = ~np.asarray(dataset.heldout, dtype=bool)
        captions = [c for c, k in zip(dataset.captions, keep, strict=False) if k]
        sketches = dataset.sketches[keep]
        return RealData(dataset.images[keep], captions, sketches,
                        np.ones(len(captions), dtype=bool))
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise EngineError(f"{folder} holds no images (.png, .jpg, .webp) and no manifest.json.")
    images, captions, sketch_files = [], [], []
    for path in files:
        caption_path = path.with_suffix(".txt")
        captions.append(caption_path.read_text().strip() if caption_path.is_file() else "")
        images.append(np.asarray(Image.open(path).convert("RGB")))
        sketch_files.append(find_sketch(folder / SKETCH_FOLDER, path.stem))
    if len({image.shape for image in images}) > 1:
        side = min(min(image.shape[:2]) for image in images)
        images = [resized(image, (side, side)) for image in images]
    data = RealData(np.stack(images), captions)
    if any(sketch_files):
        size = data.images.shape[1:3]
        blank = np.full((*size, 3), 255, dtype=np.uint8)
        data.sketches = np.stack([
            resized(np.asarray(Image.open(file).convert("RGB")), size) if file else blank
            for file in sketch_files])
        data.has_sketch = np.array([file is not None for file in sketch_files], dtype=bool)
    return data


def find_sketch(sketch_dir: Path, stem: str) -> Path | None:
    """sketches/STEM.png (any image suffix) for the image STEM.*, if present."""
    for suffix in IMAGE_SUFFIXES:
        candidate = sketch_dir / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An RGB uint8 image as (height, width) = size (unchanged when it already is)."""
    if tuple(image.shape[:2]) == tuple(size):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.LANCZOS))


def has_sketches(folder: Path) -> bool:
    """Whether a real-data folder carries sketches (cheap: no image is read)."""
    from engine.embedded.pack import is_pack

    folder = Path(folder)
    if is_pack(folder):
        return True
    if (folder / "manifest.json").is_file():
        return (folder / "sketches.npy").is_file()
    sketch_dir = folder / SKETCH_FOLDER
    return sketch_dir.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES
                                       for p in sketch_dir.iterdir())


def data_folder(config) -> Path | None:
    """--real-data, else the emoji dataset for the embedded teacher (when it is built)."""
    if config.real_data:
        return Path(config.real_data)
    if config.teacher in EMBEDDED_TEACHERS and (EMBEDDED_DATA_DIR / "manifest.json").is_file():
        return EMBEDDED_DATA_DIR
    return None


# -- sketch conditioning ---------------------------------------------------------------------
def resolve_sketch_fraction(config, conditioning_channels: int, latent_channels: int) -> float:
    """--sketch-fraction, defaulting to 0.5 when the teacher has sketch channels (as many as
    latent channels) and the data folder has sketches, else 0; an error if asked for and
    impossible."""
    folder = data_folder(config)
    available = (conditioning_channels == latent_channels and folder is not None
                 and has_sketches(folder))
    if config.sketch_fraction is None:
        return 0.5 if available else 0.0
    if config.sketch_fraction > 0 and not available:
        if conditioning_channels != latent_channels:
            raise EngineError(f"--sketch-fraction needs a teacher whose UNet takes a sketch "
                              f"latent ({latent_channels} conditioning channels); this one "
                              f"has {conditioning_channels}.")
        raise EngineError("--sketch-fraction needs sketches; pass --real-data DIR (an emoji "
                          f"dataset folder, or images with same-name sketches in "
                          f"DIR/{SKETCH_FOLDER}/).")
    return float(config.sketch_fraction)


def sketched_count(fraction: float, batch: int, position: int) -> int:
    """How many of batch number `position` are sketched: fraction * batch on average, exact
    over consecutive batches (0.5 of a batch of 1 alternates 0, 1, 0, 1, ...)."""
    def total(batches: int) -> int:
        return math.floor(round(batches * batch * fraction, 6))

    return total(position + 1) - total(position)


def sketch_conditioning(latents: torch.Tensor, ids: list[int], batch: int) -> torch.Tensor:
    """(batch, C, H, W): the sketch latents of ids in the first rows, zeros after them."""
    conditioning = torch.zeros((batch, *latents.shape[1:]), dtype=latents.dtype)
    if ids:
        conditioning[:len(ids)] = latents[torch.tensor(ids)]
    return conditioning


@torch.no_grad()
def encode_images(vae, images: np.ndarray, latent_scale: float, image_size: int,
                  device: torch.device, batch: int = 32, progress=None) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB or (N, H, W) grey -> latents * scaling_factor, float32, CPU."""
    import torch.nn.functional as F

    latents = []
    dtype = next(vae.parameters()).dtype
    for start in range(0, len(images), batch):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch]))
        if chunk.dim() == 3:  # grey sketches: the teacher saw them as RGB
            chunk = chunk.unsqueeze(-1).expand(-1, -1, -1, 3)
        pixels = chunk.permute(0, 3, 1, 2).float() / 127.5 - 1
        if pixels.shape[-1] != image_size:
            pixels = F.interpolate(pixels, size=(image_size, image_size), mode="bilinear",
                                   antialias=True, align_corners=False)
        encoded = vae.encode(pixels.to(device, dtype))
        latent = encoded.latent_dist.mean if hasattr(encoded, "latent_dist") else encoded.latents
        latents.append(latent.float().cpu() * latent_scale)
        if progress:
            progress(min(start + batch, len(images)), len(images))
    return torch.cat(latents)
