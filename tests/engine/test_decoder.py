"""A fast decoder (AutoencoderTiny folder, as TAESD ships) for live frames; the full VAE on
request."""

from __future__ import annotations

import numpy as np
import pytest

from engine.api import GenerateRequest, ModelLoadError
from engine.pipeline.generator import Generator
from engine.runtime.torch_backend import TorchBackend
from tests.engine.adapter_files import write_tiny_decoder
from tests.engine.test_cli import assert_clean_error, run_in_process

REQUEST = GenerateRequest(prompt="red apple", seed=5)


def test_the_decoder_changes_frames_and_full_decoding_equals_the_vae(tiny_student_dir, tmp_path,
                                                                      one_thread):
    generator = Generator(TorchBackend.load(str(tiny_student_dir), "cpu"))
    full, _ = generator.generate(REQUEST)
    decoder = write_tiny_decoder(tmp_path / "taesd", seed=5)
    generator.set_decoder(str(decoder))
    assert generator.decoder == str(decoder)
    fast, _ = generator.generate(REQUEST)
    assert np.abs(fast.astype(int) - full.astype(int)).max() > 0
    again, _ = generator.generate(REQUEST, full_decoder=True)
    assert np.abs(again.astype(int) - full.astype(int)).max() == 0
    generator.set_decoder(None)
    back, _ = generator.generate(REQUEST)
    assert np.abs(back.astype(int) - full.astype(int)).max() == 0


def test_a_decoder_with_other_latent_channels_is_one_sentence(tiny_student_dir, tmp_path):
    from diffusers import AutoencoderTiny

    AutoencoderTiny(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
                    num_encoder_blocks=(1,) * 4, num_decoder_blocks=(1,) * 4,
                    latent_channels=16).save_pretrained(tmp_path / "flux-taef")
    backend = TorchBackend.load(str(tiny_student_dir), "cpu")
    with pytest.raises(ModelLoadError, match="16-channel latents"):
        backend.set_decoder(str(tmp_path / "flux-taef"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        backend.set_decoder(str(tmp_path))


def test_generate_with_a_decoder_records_it(tiny_student_dir, tmp_path, capsys):
    from engine.recipe import read_recipe

    decoder = write_tiny_decoder(tmp_path / "taesd", seed=5)
    out = tmp_path / "fast.png"
    result = run_in_process(capsys, "generate", "--model", tiny_student_dir, "--backend", "onnx",
                            "--device", "cpu", "--prompt", "cat", "--decoder", decoder,
                            "--out", out)
    assert result.returncode == 0, result.stderr
    assert "PyTorch" in result.stderr  # onnx with a fast decoder runs on torch, and says so
    assert read_recipe(out).decoder == str(decoder)
    result = run_in_process(capsys, "generate", "--model", tiny_student_dir, "--device", "cpu",
                            "--prompt", "cat", "--decoder", tmp_path / "none", "--out", out)
    assert_clean_error(result, "does not exist")
