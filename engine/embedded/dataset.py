"""Emoji dataset: Noto Color Emoji glyphs rendered to 128 px RGB, captions, line sketches.

Layout of a dataset folder (all arrays written with np.save, so the bytes depend only on
the font, the `emoji` package and this code):

    images.npy      uint8 (N, 128, 128, 3) RGB on white
    sketches.npy    uint8 (N, 128, 128) grey line drawing, dark strokes on white
    heldout.npy     bool (N,) True for the ~5% held-out split
    variant.npy     bool (N,) True for skin-tone variants of another emoji
    captions.json   list of N captions ("red apple", "thumbs up medium skin tone")
    manifest.json   counts, sizes, font hash, package versions
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from engine.api import EngineError
from engine.embedded.atomic import atomic_save_folder

DEFAULT_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
FONT_SIZE = 109  # the only bitmap strike of Noto Color Emoji (CBDT)
IMAGE_SIZE = 128
HELDOUT_PER_MILLE = 50
SKIN_TONE_WORDS = ("light skin tone", "medium-light skin tone", "medium skin tone",
                   "medium-dark skin tone", "dark skin tone")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class EmojiDataset:
    """An emoji dataset loaded into memory."""

    images: np.ndarray  # (N, H, W, 3) uint8
    sketches: np.ndarray  # (N, H, W) uint8
    captions: list[str]
    heldout: np.ndarray  # (N,) bool
    variant: np.ndarray  # (N,) bool

    def __len__(self) -> int:
        return len(self.captions)

    def sketch_rgb(self, index: int) -> np.ndarray:
        return np.repeat(self.sketches[index][..., None], 3, axis=-1)


def caption_from_name(name: str) -> str:
    """':thumbs_up_medium_skin_tone:' -> 'thumbs up medium skin tone'."""
    return " ".join(name.strip(":").replace("_", " ").split())


def base_caption(caption: str) -> str:
    """The caption without skin-tone words (groups the variants of one emoji)."""
    for word in sorted(SKIN_TONE_WORDS, key=len, reverse=True):
        caption = caption.replace(word, "")
    return " ".join(caption.replace(" ,", ",").strip(" ,:").split())


def is_heldout(caption: str) -> bool:
    """Deterministic ~5% split by a hash of the base caption (variants stay together)."""
    digest = hashlib.sha256(base_caption(caption).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % 1000 < HELDOUT_PER_MILLE


def list_emoji() -> list[tuple[str, str]]:
    """(emoji, caption) for every fully-qualified emoji, sorted by code points."""
    import emoji

    fully_qualified = emoji.STATUS["fully_qualified"]
    items = [(char, caption_from_name(data["en"])) for char, data in emoji.EMOJI_DATA.items()
             if data["status"] == fully_qualified]
    return sorted(items, key=lambda item: [ord(c) for c in item[0]])


def load_font(path: Path | None) -> ImageFont.FreeTypeFont:
    font_path = Path(path) if path else DEFAULT_FONT
    if not font_path.is_file():
        raise EngineError(f"The emoji font {font_path} is missing; run apt-get install "
                          "fonts-noto-color-emoji or pass --font PATH.")
    try:
        return ImageFont.truetype(str(font_path), FONT_SIZE)
    except OSError as error:
        raise EngineError(f"Could not open {font_path} as a color bitmap font at size "
                          f"{FONT_SIZE}: {error}.") from error


def render_emoji(char: str, font: ImageFont.FreeTypeFont,
                 size: int = IMAGE_SIZE) -> np.ndarray | None:
    """The glyph at its native bitmap size, composited on white, padded square, resized."""
    left, top, right, bottom = font.getbbox(char)
    width, height = max(right - left, 1), max(bottom - top, 1)
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    ImageDraw.Draw(layer).text((-left, -top), char, font=font, embedded_color=True)
    if layer.getchannel("A").getbbox() is None:
        return None  # no glyph for this sequence
    side = max(width, height)
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.alpha_composite(layer, ((side - width) // 2, (side - height) // 2))
    image = canvas.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


def gradient_edges(image: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean HxW edges of an HxWx3 uint8 image: the strongest Sobel colour gradient of the
    lightly blurred image above threshold, thinned to pixels near a local maximum."""
    smooth = ndimage.gaussian_filter(image.astype(np.float32) / 255.0, sigma=(1.0, 1.0, 0))
    grad = np.zeros(image.shape[:2], np.float32)
    for channel in range(3):
        gx = ndimage.sobel(smooth[..., channel], axis=1)
        gy = ndimage.sobel(smooth[..., channel], axis=0)
        grad = np.maximum(grad, np.hypot(gx, gy))
    local_max = grad >= ndimage.maximum_filter(grad, size=3) * 0.8
    return (grad > threshold) & local_max


def extract_sketch(image: np.ndarray, seed: int) -> np.ndarray:
    """Line sketch of an RGB image: colour-gradient edges as thin dark strokes on white.

    Seeded random threshold, stroke width, darkness, gaps and a smooth displacement
    field, so that the strokes look like a hand drawing; a pure function of (image, seed).
    """
    rng = np.random.default_rng(seed)
    edges = gradient_edges(image, rng.uniform(0.25, 0.45))
    # Gaps: drop short runs of pixels with smooth random noise.
    gaps = ndimage.gaussian_filter(rng.standard_normal(edges.shape), 3.0)
    edges &= gaps > np.quantile(gaps, rng.uniform(0.0, 0.15))
    # Jitter: displace by a smooth random field of up to ~1.5 px.
    amplitude = rng.uniform(0.3, 1.5)
    field = [ndimage.gaussian_filter(rng.standard_normal(edges.shape), 6.0) for _ in range(2)]
    field = [f / (np.abs(f).max() + 1e-8) * amplitude for f in field]
    rows, cols = np.meshgrid(np.arange(edges.shape[0]), np.arange(edges.shape[1]), indexing="ij")
    strokes = ndimage.map_coordinates(edges.astype(np.float32), [rows + field[0], cols + field[1]],
                                      order=1, mode="constant")
    width = rng.choice([0.0, 0.5, 1.0], p=[0.45, 0.35, 0.2])
    if width > 0:
        strokes = np.maximum(strokes, ndimage.grey_dilation(strokes, size=(2, 2)) * width)
    darkness = rng.uniform(0.0, 70.0)
    sketch = 255.0 - np.clip(strokes * 1.5, 0.0, 1.0) * (255.0 - darkness)
    return np.clip(np.round(sketch), 0, 255).astype(np.uint8)


def sketch_seed(caption: str, base_seed: int = 0) -> int:
    digest = hashlib.sha256(f"{base_seed}:{caption}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def build_dataset(out: Path, font_path: Path | None = None, limit: int | None = None,
                  progress=None) -> dict:
    """Render, caption and sketch the emoji; write the dataset folder atomically."""
    font = load_font(font_path)
    font_file = Path(font_path) if font_path else DEFAULT_FONT
    entries = list_emoji()
    if limit is not None:
        if limit < 1:
            raise EngineError("--limit must be at least 1.")
        entries = entries[:limit]
    images, sketches, captions, skipped = [], [], [], 0
    iterator = progress(entries) if progress else entries
    for char, caption in iterator:
        image = render_emoji(char, font)
        if image is None:
            skipped += 1
            continue
        images.append(image)
        sketches.append(extract_sketch(image, sketch_seed(caption)))
        captions.append(caption)
    if not images:
        raise EngineError("No emoji rendered with this font; check that it is a color emoji font.")
    heldout = np.array([is_heldout(c) for c in captions], dtype=bool)
    variant = np.array([base_caption(c) != c for c in captions], dtype=bool)
    import emoji

    manifest = {
        "format_version": FORMAT_VERSION,
        "count": len(captions),
        "train": int((~heldout).sum()),
        "heldout": int(heldout.sum()),
        "skin_tone_variants": int(variant.sum()),
        "skipped_empty": skipped,
        "image_size": IMAGE_SIZE,
        "font": font_file.name,
        "font_sha256": hashlib.sha256(font_file.read_bytes()).hexdigest(),
        "emoji_package": emoji.__version__,
        "files": ["images.npy", "sketches.npy", "heldout.npy", "variant.npy", "captions.json"],
    }
    arrays = {"images": np.stack(images), "sketches": np.stack(sketches),
              "heldout": heldout, "variant": variant}
    write_dataset(Path(out), arrays, captions, manifest)
    return manifest


def write_dataset(out: Path, arrays: dict[str, np.ndarray], captions: list[str],
                  manifest: dict) -> None:
    """Write the arrays, captions and manifest as one folder, atomically."""

    def write(folder: Path) -> None:
        for name, array in arrays.items():
            np.save(folder / f"{name}.npy", array, allow_pickle=False)
        (folder / "captions.json").write_text(json.dumps(captions, ensure_ascii=False, indent=0))
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True)
                                              + "\n")

    atomic_save_folder(out, write)


def load_dataset(folder: Path) -> EmojiDataset:
    folder = Path(folder)
    if not (folder / "manifest.json").is_file():
        raise EngineError(f"{folder} is not an emoji dataset (no manifest.json); build one with "
                          "python -m engine data emoji --out DIR.")
    return EmojiDataset(
        images=np.load(folder / "images.npy"),
        sketches=np.load(folder / "sketches.npy"),
        captions=json.loads((folder / "captions.json").read_text()),
        heldout=np.load(folder / "heldout.npy"),
        variant=np.load(folder / "variant.npy"),
    )
