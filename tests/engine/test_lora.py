"""LoRAs: reading diffusers / PEFT and kohya files, fusing at a weight, unfusing exactly."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from engine.api import GenerateRequest, LoraChoice, ModelLoadError
from engine.pipeline.generator import Generator
from engine.pipeline.tiny import build_tiny_pipeline
from engine.runtime import create_backend
from engine.runtime.lora import find_module, lora_components
from engine.runtime.lora_files import read_lora_file
from engine.runtime.torch_backend import TorchBackend
from tests.engine.adapter_files import merged_by_hand, random_layers, write_kohya, write_peft

REQUEST = GenerateRequest(prompt="red apple", seed=3)


@pytest.fixture
def backend(tiny_student_dir):
    return TorchBackend.load(str(tiny_student_dir), "cpu")


@pytest.fixture
def components(backend):
    return lora_components(backend.parts)


def all_parameters(backend) -> dict[str, torch.Tensor]:
    parts = backend.parts
    return {f"{name}.{key}": value.detach().clone() for name, module in
            (("unet", parts.unet), ("text", parts.text_encoder.model))
            for key, value in module.state_dict().items()}


def test_weight_zero_leaves_the_image_unchanged(backend, components, tmp_path, one_thread):
    generator = Generator(backend)
    before, _ = generator.generate(REQUEST)
    path = write_peft(tmp_path / "style.safetensors", random_layers(components), alpha=2.0)
    generator.set_loras([LoraChoice(str(path), 0.0)])
    after, _ = generator.generate(REQUEST)
    assert np.abs(after.astype(int) - before.astype(int)).max() == 0
    generator.set_loras([LoraChoice(str(path), 1.0)])
    changed, _ = generator.generate(REQUEST)
    assert np.abs(changed.astype(int) - before.astype(int)).max() > 0


def test_weight_one_matches_the_weights_merged_by_hand(backend, components, tmp_path):
    layers = random_layers(components, rank=2)
    expected = merged_by_hand(components, [(layers, 4.0, 0.7)])
    path = write_peft(tmp_path / "style.safetensors", layers, alpha=4.0)
    backend.set_loras([LoraChoice(str(path), 0.7)])
    for (component, module), weight in expected.items():
        fused = find_module(components[component], module).weight
        torch.testing.assert_close(fused, weight, rtol=0, atol=1e-6)


def test_fuse_then_unfuse_restores_every_parameter_exactly(backend, components, tmp_path):
    original = all_parameters(backend)
    first = write_peft(tmp_path / "a.safetensors", random_layers(components, seed=1), 2.0)
    second = write_kohya(tmp_path / "b.safetensors", random_layers(components, seed=2), 1.0)
    backend.set_loras([LoraChoice(str(first), 1.0)])
    assert any(not torch.equal(value, original[key])
               for key, value in all_parameters(backend).items())
    backend.set_loras([LoraChoice(str(second), 0.5)])  # another set: from the originals
    backend.set_loras([])
    restored = all_parameters(backend)
    assert restored.keys() == original.keys()
    assert all(torch.equal(restored[key], original[key]) for key in original)
    assert backend.loras == ()


def test_kohya_and_diffusers_naming_give_the_same_weights(backend, components, tmp_path):
    layers = random_layers(components, seed=4)
    peft_file = write_peft(tmp_path / "peft.safetensors", layers, alpha=1.0)
    kohya_file = write_kohya(tmp_path / "kohya.safetensors", layers, alpha=1.0)
    backend.set_loras([LoraChoice(str(peft_file), 0.8)])
    via_peft = all_parameters(backend)
    backend.set_loras([LoraChoice(str(kohya_file), 0.8)])
    via_kohya = all_parameters(backend)
    assert all(torch.equal(via_peft[key], via_kohya[key]) for key in via_peft)
    assert {layer.component for layer in read_lora_file(kohya_file).layers} == \
        {"unet", "text_encoder"}


def test_two_loras_stack(backend, components, tmp_path):
    first_layers, second_layers = random_layers(components, seed=5), random_layers(
        components, seed=6, text=False)
    first = write_peft(tmp_path / "a.safetensors", first_layers, alpha=2.0)
    second = write_kohya(tmp_path / "b.safetensors", second_layers, alpha=1.0)
    expected = merged_by_hand(components, [(first_layers, 2.0, 0.5), (second_layers, 1.0, 1.5)])
    applied = backend.set_loras([LoraChoice(str(first), 0.5), LoraChoice(str(second), 1.5)])
    for (component, module), weight in expected.items():
        fused = find_module(components[component], module).weight
        torch.testing.assert_close(fused, weight, rtol=0, atol=1e-6)
    assert [choice.sha256 for choice in applied] == [read_lora_file(first).sha256,
                                                     read_lora_file(second).sha256]


def test_a_lora_for_another_architecture_is_one_sentence(backend, tmp_path):
    other_dir = build_tiny_pipeline(tmp_path / "other", pooled_text=True, seed=1)
    other = TorchBackend.load(str(other_dir), "cpu")
    other_components = lora_components(other.parts)
    layers = random_layers(other_components, seed=7, text=False)
    layers[("unet", "class_embedding.linear_1")] = (torch.randn(2, 32), torch.randn(128, 2))
    path = write_peft(tmp_path / "other.safetensors", layers, 1.0)
    original = all_parameters(backend)
    with pytest.raises(ModelLoadError) as error:
        backend.set_loras([LoraChoice(str(path), 1.0)])
    message = str(error.value)
    assert "made for another architecture" in message and message.count(". ") == 0
    assert all(torch.equal(value, original[key]) for key, value in all_parameters(backend).items())


def test_a_lora_with_other_shapes_is_refused(backend, components, tmp_path):
    layers = random_layers(components, seed=8, text=False)
    name = ("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q")
    layers[name] = (torch.randn(2, 64), torch.randn(64, 2))  # a wider model's projection
    path = write_peft(tmp_path / "wide.safetensors", layers, 1.0)
    with pytest.raises(ModelLoadError, match="another architecture"):
        backend.set_loras([LoraChoice(str(path), 1.0)])


@pytest.mark.parametrize("content, reason", [(b"", "not a readable"), (b"\x10" * 64, "readable")])
def test_damaged_files_are_one_sentence(tmp_path, content, reason):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=reason):
        read_lora_file(path)


def test_a_changed_file_is_refused_by_its_digest(backend, components, tmp_path):
    path = write_peft(tmp_path / "style.safetensors", random_layers(components), 1.0)
    digest = read_lora_file(path).sha256
    write_peft(path, random_layers(components, seed=9), 1.0)
    with pytest.raises(ModelLoadError, match="SHA-256 differs"):
        backend.set_loras([LoraChoice(str(path), 1.0, digest)])


def test_onnx_with_loras_runs_torch_with_a_notice(tiny_student_dir, tmp_path):
    backend = TorchBackend.load(str(tiny_student_dir), "cpu")
    path = write_peft(tmp_path / "s.safetensors", random_layers(lora_components(backend.parts)),
                      1.0)
    runtime = create_backend(str(tiny_student_dir), "onnx", "cpu",
                             loras=[LoraChoice(str(path), 1.0)])
    assert runtime.name == "torch" and "PyTorch" in runtime.notice
    assert [choice.path for choice in runtime.loras] == [str(path)]
    auto = create_backend(str(tiny_student_dir), "auto", "cpu", loras=[LoraChoice(str(path))])
    assert auto.name == "torch" and auto.notice == ""


def test_peft_metadata_alpha_scales(tmp_path, components):
    path = write_peft(tmp_path / "s.safetensors", random_layers(components, rank=2), alpha=3.0)
    lora = read_lora_file(path)
    assert {layer.scale for layer in lora.layers} == {1.5}
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        metadata = json.loads(handle.metadata()["lora_adapter_metadata"])
    assert metadata["unet.r"] == 2 and metadata["unet.lora_alpha"] == 3.0


def test_the_service_fuses_between_frames_and_stamps_results(backend, components, tmp_path,
                                                             no_thread_leak):
    from engine.service import GenerationService

    results, arrived = [], threading.Event()
    path = write_peft(tmp_path / "style.safetensors", random_layers(components), 1.0)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")

    def on_result(result):
        results.append(result)
        arrived.set()

    service = GenerationService(Generator(backend), on_result)
    try:
        applied = service.set_loras([LoraChoice(str(path), 0.5)]).result(timeout=60)
        assert applied[0].sha256 == read_lora_file(path).sha256
        service.submit(REQUEST)
        assert arrived.wait(60)
        assert results[-1].ok and results[-1].loras == applied
        with pytest.raises(ModelLoadError, match="not a readable"):
            service.set_loras([LoraChoice(str(bad), 1.0)]).result(timeout=60)
        assert backend.loras == applied  # a bad file changes nothing
    finally:
        service.close()


def test_sdxl_kohya_lora_reaches_both_text_encoders_and_unfuses_exactly(tmp_path):
    sdxl = TorchBackend.load(str(build_tiny_pipeline(tmp_path / "sdxl", family="sdxl")), "cpu")
    components = lora_components(sdxl.parts)
    assert set(components) == {"unet", "text_encoder", "text_encoder_2"}
    layers = {}
    for component in ("text_encoder", "text_encoder_2"):
        weight = find_module(components[component],
                             "text_model.encoder.layers.0.self_attn.q_proj").weight
        layers[(component, "text_model.encoder.layers.0.self_attn.q_proj")] = (
            torch.randn(2, weight.shape[1]), torch.randn(weight.shape[0], 2))
    name = next(name for name, module in components["unet"].named_modules()
                if name.endswith("attn2.to_k"))
    weight = components["unet"].get_submodule(name).weight
    layers[("unet", name)] = (torch.randn(2, weight.shape[1]), torch.randn(weight.shape[0], 2))
    path = write_kohya(tmp_path / "sdxl_kohya.safetensors", layers, alpha=1.0)
    assert {layer.component for layer in read_lora_file(path).layers} == \
        {"unet", "text_encoder", "text_encoder_2"}
    original = {key: find_module(components[key[0]], key[1]).weight.detach().clone()
                for key in layers}
    expected = merged_by_hand(components, [(layers, 1.0, 0.6)])
    sdxl.set_loras([LoraChoice(str(path), 0.6)])
    for key, weight in expected.items():
        torch.testing.assert_close(find_module(components[key[0]], key[1]).weight, weight,
                                   rtol=0, atol=1e-6)
    sdxl.set_loras([])
    assert all(torch.equal(find_module(components[key[0]], key[1]).weight, value)
               for key, value in original.items())


def test_an_sd1_lora_on_sdxl_is_refused(tmp_path, components):
    sdxl = TorchBackend.load(str(build_tiny_pipeline(tmp_path / "sdxl", family="sdxl")), "cpu")
    path = write_peft(tmp_path / "sd1.safetensors", random_layers(components), 1.0)
    with pytest.raises(ModelLoadError, match="another architecture"):
        sdxl.set_loras([LoraChoice(str(path), 1.0)])


# kohya's SDXL names (the original sgm UNet's blocks) of some tiny SDXL UNet layers: one
# ResNet block and one attention block per level, so input_blocks 1 = down_blocks.0's
# ResNet, 2 = its downsampler, 3 = down_blocks.1; output_blocks 0-1 = up_blocks.0
SGM_NAMES = {"input_blocks_1_0_in_layers_2": "down_blocks.0.resnets.0.conv1",
             "input_blocks_3_1_transformer_blocks_0_attn1_to_q":
                 "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
             "middle_block_1_proj_in": "mid_block.attentions.0.proj_in",
             "output_blocks_1_1_transformer_blocks_1_attn2_to_k":
                 "up_blocks.0.attentions.1.transformer_blocks.1.attn2.to_k"}


def test_kohya_sdxl_block_names_reach_the_diffusers_layers(tmp_path):
    from safetensors.torch import save_file

    sdxl = TorchBackend.load(str(build_tiny_pipeline(tmp_path / "sdxl", family="sdxl")), "cpu")
    unet = sdxl.parts.unet
    generator = torch.Generator().manual_seed(3)
    tensors, layers = {}, {}
    for sgm, module in SGM_NAMES.items():
        weight = unet.get_submodule(module).weight
        down = torch.randn((2, *weight.shape[1:]), generator=generator)
        up = torch.randn((weight.shape[0], 2, *([1, 1] if weight.dim() == 4 else [])),
                         generator=generator)
        tensors |= {f"lora_unet_{sgm}.lora_down.weight": down,
                    f"lora_unet_{sgm}.lora_up.weight": up,
                    f"lora_unet_{sgm}.alpha": torch.tensor(1.0)}
        layers[("unet", module)] = (down, up)
    path = tmp_path / "sdxl_sgm.safetensors"
    save_file(tensors, str(path))
    expected = merged_by_hand({"unet": unet}, [(layers, 1.0, 0.9)])
    sdxl.set_loras([LoraChoice(str(path), 0.9)])
    for (_, module), weight in expected.items():
        torch.testing.assert_close(unet.get_submodule(module).weight, weight, rtol=0, atol=1e-6)
