"""Latent packs: a pruned MiniLM that encodes its captions as the full one does, and a pack
that trains the teacher and feeds distillation without the images or the text package."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.__main__ import main
from engine.api import EngineError
from engine.distill.data import default_prompts
from engine.embedded import dataset as ds
from engine.embedded.latents import encode_captions, load_minilm
from engine.embedded.pack import (
    is_pack,
    load_pack,
    load_pack_latents,
    pack_captions,
    write_pruned_text_encoder,
)
from engine.runtime.text import load_text_encoder

REPO = Path(__file__).resolve().parents[2]
EMBEDDED_VAE = REPO / "assets" / "models" / "teacher" / "vae"
CAPTIONS = ["red apple", "grinning face with big eyes", "flag: United Kingdom",
            "woman technologist: medium-dark skin tone", "keycap: 7"]

needs_font = pytest.mark.skipif(not ds.DEFAULT_FONT.is_file(),
                                reason="fonts-noto-color-emoji is not installed")


def test_pruned_text_encoder_keeps_the_captions_encoding(tmp_path):
    full = load_minilm()
    vocab = write_pruned_text_encoder(full, CAPTIONS + [""], tmp_path)
    pruned = load_text_encoder(tmp_path, None, 32, "cpu", torch.float32)
    assert vocab < 60  # of 30,522 wordpieces
    weights = (tmp_path / "text_encoder" / "model.safetensors").stat().st_size
    assert weights < 24e6  # fp16 and without the 11.7M-parameter embedding table
    full_ids = full.tokenize(CAPTIONS)["input_ids"]
    pruned_ids = pruned.tokenize(CAPTIONS)["input_ids"]
    assert torch.equal(full_ids != 0, pruned_ids != 0)  # same length, same padding
    full_states, full_pooled = encode_captions(full, CAPTIONS + [""])
    states, pooled = encode_captions(pruned, CAPTIONS + [""])
    assert (full_states - states).abs().mean() < 5e-3  # fp16 weights, fp32 compute
    assert (full_pooled * pooled).sum(-1).min() > 0.9999


@needs_font
def test_pack_trains_the_teacher_and_feeds_distillation(tmp_path, capsys):
    data, pack, run = tmp_path / "data", tmp_path / "pack", tmp_path / "teacher"
    assert main(["data", "emoji", "--out", str(data), "--limit", "24"]) == 0
    assert main(["data", "pack", "--data", str(data), "--vae", str(EMBEDDED_VAE),
                 "--out", str(pack)]) == 0
    assert is_pack(pack) and not is_pack(data)
    manifest = json.loads((pack / "manifest.json").read_text())
    assert manifest["count"] == 24 and manifest["image_size"] == 128
    cache = load_pack(pack)
    assert cache.latents.shape == (24, 4, 16, 16) and cache.token_states.shape[1:] == (32, 384)
    latents, sketches, captions = load_pack_latents(pack)
    assert len(captions) == len(latents) == len(sketches) == int((~cache.heldout).sum())
    assert captions == pack_captions(pack)
    assert default_prompts(str(EMBEDDED_VAE), None, str(pack)) == sorted(set(captions))

    assert main(["train-teacher", "--data", str(pack), "--vae", str(EMBEDDED_VAE), "--out",
                 str(run), "--steps", "2", "--batch", "2", "--sample-every", "100"]) == 0
    model = run / "model"
    index = json.loads((model / "model_index.json").read_text())
    assert "text_encoder_package" not in index and (model / "text_encoder").is_dir()

    student_run = tmp_path / "student"
    assert main(["distill", "--teacher", str(model), "--out", str(student_run), "--steps", "1",
                 "--batch", "2", "--regression-weight", "0", "--real-data", str(pack),
                 "--sketch-fraction", "0.5", "--sample-every", "0", "--progress", "none"]) == 0
    config = json.loads((student_run / "config.json").read_text())
    assert config["real_data"] == str(pack) and config["sketch_fraction"] == 0.5
    assert (student_run / "student" / "unet").is_dir()


def test_a_folder_that_is_not_a_pack_is_refused(tmp_path):
    with pytest.raises(EngineError, match="not a latent pack"):
        load_pack(tmp_path)
