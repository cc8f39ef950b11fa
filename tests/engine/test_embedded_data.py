"""Emoji dataset builder: captions, rendering, sketches, split, determinism, CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.__main__ import main
from engine.api import EngineError
from engine.embedded import dataset as ds

needs_font = pytest.mark.skipif(not ds.DEFAULT_FONT.is_file(),
                                reason="fonts-noto-color-emoji is not installed")


def test_captions_from_emoji_names():
    captions = dict(ds.list_emoji())
    assert captions["\U0001F34E"] == "red apple"
    assert captions["\U0001F680"] == "rocket"
    assert captions["\U0001F44D\U0001F3FD"] == "thumbs up medium skin tone"
    assert ds.caption_from_name(":woman_artist_medium-light_skin_tone:") == \
        "woman artist medium-light skin tone"
    assert all(":" not in c and "_" not in c for c in captions.values())
    assert 3500 < len(captions) < 6000


def test_base_caption_groups_skin_tone_variants():
    assert ds.base_caption("thumbs up medium skin tone") == "thumbs up"
    assert ds.base_caption("kiss: woman, man, dark skin tone, light skin tone") == \
        "kiss: woman, man"
    assert ds.base_caption("red apple") == "red apple"


def test_split_is_deterministic_about_five_percent_and_keeps_variants_together():
    captions = [c for _, c in ds.list_emoji()]
    flags = [ds.is_heldout(c) for c in captions]
    assert flags == [ds.is_heldout(c) for c in captions]
    assert 0.03 < sum(flags) / len(flags) < 0.08
    by_base: dict[str, set[bool]] = {}
    for caption, flag in zip(captions, flags, strict=True):
        by_base.setdefault(ds.base_caption(caption), set()).add(flag)
    assert all(len(values) == 1 for values in by_base.values())


def disc_image(size: int = 128, radius: int = 30) -> np.ndarray:
    rows, cols = np.mgrid[:size, :size]
    inside = (rows - size / 2) ** 2 + (cols - size / 2) ** 2 < radius**2
    image = np.full((size, size, 3), 255, np.uint8)
    image[inside] = (220, 30, 30)
    return image


def test_sketch_is_dark_strokes_on_white_along_edges():
    sketch = ds.extract_sketch(disc_image(), seed=3)
    assert sketch.shape == (128, 128) and sketch.dtype == np.uint8
    assert (sketch >= 250).mean() > 0.85  # mostly white paper
    rows, cols = np.nonzero(sketch < 128)
    assert len(rows) > 60  # a visible outline
    distance = np.hypot(rows - 64, cols - 64)
    assert np.abs(distance - 30).max() < 6  # strokes only near the disc's edge
    assert sketch[64, 64] > 250 and sketch[5, 5] > 250


def test_sketch_is_a_pure_function_of_image_and_seed():
    image = disc_image()
    first = ds.extract_sketch(image, seed=7)
    assert np.array_equal(first, ds.extract_sketch(image.copy(), seed=7))
    assert not np.array_equal(first, ds.extract_sketch(image, seed=8))


def test_missing_font_is_one_actionable_sentence(tmp_path, capsys):
    with pytest.raises(EngineError, match="apt-get install fonts-noto-color-emoji"):
        ds.load_font(tmp_path / "none.ttf")
    code = main(["data", "emoji", "--out", str(tmp_path / "d"), "--font", str(tmp_path / "x.ttf")])
    assert code == 2
    assert "--font" in capsys.readouterr().err


@needs_font
def test_build_dataset_is_deterministic_and_well_formed(tmp_path):
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    assert main(["data", "emoji", "--out", str(out_a), "--limit", "12"]) == 0
    ds.build_dataset(out_b, limit=12)
    for name in ("images.npy", "sketches.npy", "heldout.npy", "captions.json", "manifest.json"):
        assert (out_a / name).read_bytes() == (out_b / name).read_bytes(), name
    data = ds.load_dataset(out_a)
    manifest = json.loads((out_a / "manifest.json").read_text())
    assert len(data) == manifest["count"] == 12 - manifest["skipped_empty"]
    assert data.images.shape == (len(data), 128, 128, 3) and data.images.dtype == np.uint8
    assert data.sketches.shape == (len(data), 128, 128)
    assert (data.images[:, 0, 0] == 255).all()  # composited on white
    assert (data.images.reshape(len(data), -1).min(1) < 200).all()  # but not blank
    assert all(0.5 < (s >= 250).mean() < 1.0 for s in data.sketches)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary folders left behind


@needs_font
def test_render_skips_glyphs_the_font_lacks():
    font = ds.load_font(None)
    apple = ds.render_emoji("\U0001F34E", font)
    assert apple is not None and apple.shape == (128, 128, 3)
    red = (apple[..., 0] > 150) & (apple[..., 1] < 100)
    assert red.mean() > 0.2
    assert ds.render_emoji("\uE000", font) is None  # private use: no glyph
