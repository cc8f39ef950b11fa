"""The SD 2.x and SDXL families as diffusers folders: conditioning, sizes, backend choice."""

import json

import numpy as np
import pytest
import torch

from engine.api import EngineError, GenerateRequest, ModelOptions
from engine.pipeline.generator import Generator
from engine.pipeline.tiny import build_tiny_pipeline
from engine.runtime.loading import load_pipeline
from engine.runtime.torch_backend import TorchBackend


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    return build_tiny_pipeline(tmp_path_factory.mktemp("families") / "sdxl", family="sdxl")


@pytest.fixture(scope="module")
def sd2_dir(tmp_path_factory):
    return build_tiny_pipeline(tmp_path_factory.mktemp("families") / "sd2", family="sd2")


def diffusers_sdxl_pipeline(parts):
    """diffusers' own SDXL pipeline over the same loaded components (the reference)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    encoder = parts.text_encoder
    return StableDiffusionXLPipeline(
        vae=parts.vae, text_encoder=encoder.models[0], text_encoder_2=encoder.models[1],
        tokenizer=encoder.tokenizers[0], tokenizer_2=encoder.tokenizers[1], unet=parts.unet,
        scheduler=EulerDiscreteScheduler(), force_zeros_for_empty_prompt=True)


def test_the_tiny_families_have_their_architecture(sd2_dir, sdxl_dir):
    sd2_unet = json.loads((sd2_dir / "unet" / "config.json").read_text())
    assert sd2_unet["use_linear_projection"] and sd2_unet["attention_head_dim"] == [1, 2]
    assert json.loads((sd2_dir / "scheduler" / "scheduler_config.json").read_text())[
        "prediction_type"] == "v_prediction"
    from transformers import CLIPTokenizer

    assert CLIPTokenizer.from_pretrained(str(sd2_dir / "tokenizer")).pad_token == "!"
    assert CLIPTokenizer.from_pretrained(str(sdxl_dir / "tokenizer")).pad_token == "<|endoftext|>"
    assert CLIPTokenizer.from_pretrained(str(sdxl_dir / "tokenizer_2")).pad_token == "!"
    sdxl_unet = json.loads((sdxl_dir / "unet" / "config.json").read_text())
    assert sdxl_unet["addition_embed_type"] == "text_time"
    assert sdxl_unet["cross_attention_dim"] == 128  # 64 + 64: both encoders' states
    assert (sdxl_dir / "text_encoder_2").is_dir() and (sdxl_dir / "tokenizer_2").is_dir()
    with pytest.raises(ValueError, match="Unknown family"):
        build_tiny_pipeline(sdxl_dir.parent / "x", family="sd3")


def test_sdxl_text_conditioning_matches_diffusers(sdxl_dir):
    """Penultimate states of both encoders, the second's projected pooled vector, zeros for
    an empty prompt, (size, size, 0, 0, size, size) time ids: as StableDiffusionXLPipeline."""
    parts = load_pipeline(sdxl_dir)
    pipe = diffusers_sdxl_pipeline(parts)
    states, negative, pooled, negative_pooled = pipe.encode_prompt(
        "red apple", device="cpu", do_classifier_free_guidance=True)
    ours = parts.text_encoder.encode(["red apple"])
    assert torch.equal(ours.token_states, states) and torch.equal(ours.pooled, pooled)
    empty = parts.text_encoder.encode([""])
    assert torch.equal(empty.token_states, negative) and not empty.token_states.any()
    assert torch.equal(empty.pooled, negative_pooled)
    time_ids = pipe._get_add_time_ids((32, 32), (0, 0), (32, 32), dtype=torch.float32,
                                      text_encoder_projection_dim=64)
    assert torch.equal(parts.time_ids, time_ids)


def test_the_sdxl_unet_step_matches_diffusers(sdxl_dir):
    """The backend's UNet call passes text_embeds and time_ids as SDXL's UNet wants them."""
    backend = TorchBackend.load(str(sdxl_dir), "cpu")
    parts = backend.parts
    text = backend.encode_text(["blue car"])
    x_t = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([999])
    expected = parts.unet(x_t, t, encoder_hidden_states=text.token_states, added_cond_kwargs={
        "text_embeds": text.pooled, "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]])}).sample
    assert torch.equal(backend.unet(x_t, t, text, None), expected)
    other_size = dict(parts.unet(x_t, t, encoder_hidden_states=text.token_states,
                                 added_cond_kwargs={"text_embeds": text.pooled,
                                                    "time_ids": torch.zeros(1, 6)}))
    assert not torch.equal(other_size["sample"], expected)  # the time ids reach the UNet


def test_each_family_renders_frames_at_its_native_size(sd2_dir, sdxl_dir):
    for folder in (sd2_dir, sdxl_dir):
        generator = Generator(TorchBackend.load(str(folder), "cpu"))
        one_step, _ = generator.generate(GenerateRequest("red apple", seed=3))
        teacher, _ = generator.generate(GenerateRequest("red apple", seed=3, teacher_steps=2))
        assert one_step.shape == teacher.shape == (32, 32, 3)
        assert not np.array_equal(one_step, teacher)
        again, _ = Generator(TorchBackend.load(str(folder), "cpu")).generate(
            GenerateRequest("red apple", seed=3))
        assert np.array_equal(one_step, again)


def test_the_native_size_comes_from_the_unet_and_a_size_option_overrides_it(tmp_path):
    folder = build_tiny_pipeline(tmp_path / "sdxl", family="sdxl")
    index = json.loads((folder / "model_index.json").read_text())
    del index["image_size"]
    (folder / "model_index.json").write_text(json.dumps(index))
    parts = load_pipeline(folder)
    assert (parts.image_size, parts.latent_size) == (32, 4)  # sample_size 4 x 8
    resized = load_pipeline(folder, options=ModelOptions(size=64))
    assert (resized.image_size, resized.latent_size) == (64, 8)
    assert resized.time_ids.tolist() == [[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]
    image, _ = Generator(TorchBackend(resized, "cpu")).generate(GenerateRequest("cat", seed=1))
    assert image.shape == (64, 64, 3)
    v_parts = load_pipeline(folder, options=ModelOptions(prediction="v_prediction"))
    assert v_parts.schedule.prediction_type == "v_prediction"


def test_onnx_falls_back_to_torch_for_sdxl_with_a_notice(sdxl_dir, caplog):
    pytest.importorskip("onnxruntime")
    from engine.runtime import choose_backend, create_backend
    from engine.runtime.onnx_export import export_model

    assert choose_backend(str(sdxl_dir), "cpu") == "torch"
    with caplog.at_level("WARNING", logger="engine.runtime"):
        backend = create_backend(str(sdxl_dir), "onnx", "cpu")
    assert backend.name == "torch"
    assert backend.notice == ("The ONNX export does not cover SDXL's second text encoder and "
                              "size conditioning; running PyTorch instead.")
    assert backend.notice in caplog.text
    with pytest.raises(EngineError, match="run this model with --backend torch"):
        export_model(str(sdxl_dir), sdxl_dir.parent / "export")
