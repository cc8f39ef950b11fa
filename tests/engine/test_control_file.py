"""Single-file ControlNets in the original release layout: the same frames as the diffusers
folder they were written from, with a single-file base model too, and one sentence for a
damaged or foreign file."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from engine.api import GenerateRequest, ModelLoadError, ModelOptions
from tests.engine.original_layout import write_controlnet_file
from tests.engine.test_control import drawing, max_difference

TINY = ModelOptions(size=32)
REQUESTS = (GenerateRequest("red apple", seed=1, control_image=drawing(10)),
            GenerateRequest("blue car", seed=2, control_image=drawing(20),
                            control_strength=0.7),
            GenerateRequest("red apple", seed=1, teacher_steps=2, guidance=3.0,
                            control_image=drawing(10)))


@pytest.fixture(scope="module")
def sd1_controlnet(tiny_family_models, tmp_path_factory):
    """(an SD-1.x-family ControlNet folder shaped for the tiny SD 1.x UNet, the same model as
    an original-layout .safetensors file named for its control type)."""
    from engine.pipeline.tiny_control import build_controlnet_like
    from engine.runtime.loading import load_pipeline

    root = tmp_path_factory.mktemp("control-file")
    unet = load_pipeline(tiny_family_models["sd1"][0]).unet
    folder = build_controlnet_like(unet, 4, root / "folder-scribble", control_type=None)
    return folder, write_controlnet_file(folder, root / "control_v11p_sd15_lineart.safetensors")


def generator_for(model, control, options=None, control_type=None):
    from engine.pipeline.generator import Generator
    from engine.runtime.control import load_control
    from engine.runtime.torch_backend import TorchBackend

    backend = TorchBackend.load(str(model), "cpu", options=options)
    return Generator(backend, control=load_control(control, backend, control_type))


def test_a_controlnet_file_draws_exactly_what_its_folder_draws(tiny_family_models,
                                                               sd1_controlnet, tmp_path,
                                                               one_thread):
    """Same weights after conversion (torch.equal), same frames (max difference 0), with or
    without the control_model. prefix and as a .pth read by safe unpickling."""
    model = tiny_family_models["sd1"][0]
    folder, control_file = sd1_controlnet
    from_folder = generator_for(model, folder, control_type="lineart")
    from_file = generator_for(model, control_file)
    assert from_file.control.control_type == "lineart"  # from the file's name
    expected = from_folder.control.network.state_dict()
    loaded = from_file.control.network.state_dict()
    assert expected.keys() == loaded.keys()
    assert all(torch.equal(expected[key], loaded[key]) for key in expected)
    for request in REQUESTS:
        assert max_difference(from_file.generate(request)[0],
                              from_folder.generate(request)[0]) == 0
    bare = write_controlnet_file(folder, tmp_path / "bare.pth", prefix="")
    from_pth = generator_for(model, bare, control_type="lineart")
    assert from_pth.control.control_type == "lineart"
    assert max_difference(from_pth.generate(REQUESTS[0])[0],
                          from_folder.generate(REQUESTS[0])[0]) == 0


def test_a_single_file_base_with_a_controlnet_file_follows_the_drawing(tiny_family_models,
                                                                        sd1_controlnet,
                                                                        one_thread):
    checkpoint = tiny_family_models["sd1"][1]
    generator = generator_for(checkpoint, sd1_controlnet[1], TINY)
    plain = GenerateRequest("cat", seed=3, control_image=drawing(), control_strength=0.0)
    off, _ = generator.generate(plain)
    on, _ = generator.generate(GenerateRequest("cat", seed=3, control_image=drawing()))
    assert max_difference(on, off) > 0


def test_a_control_json_beside_the_file_names_its_type(tiny_family_models, sd1_controlnet,
                                                       tmp_path):
    from engine.runtime.control import guess_control_type

    copy = tmp_path / "control_v11p_sd15_scribble.safetensors"
    copy.write_bytes(sd1_controlnet[1].read_bytes())
    assert guess_control_type(copy) == "scribble"
    (tmp_path / "control.json").write_text('{"type": "canny"}')
    assert guess_control_type(copy) == "canny"


def damaged_files(control_file, tmp_path):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(control_file.read_bytes()[:5000])
    foreign = tmp_path / "foreign.safetensors"
    state = load_file(str(control_file))
    save_file({key: value for key, value in state.items() if "zero_convs" not in key},
              str(foreign))
    truncated_pth = tmp_path / "truncated.pth"
    torch.save(state, tmp_path / "whole.pth")
    truncated_pth.write_bytes((tmp_path / "whole.pth").read_bytes()[:3000])
    return {truncated: "not a complete safetensors file", foreign: "not a ControlNet",
            truncated_pth: "not a complete checkpoint"}


def test_a_truncated_or_foreign_control_file_is_one_sentence(tiny_family_models,
                                                            sd1_controlnet, tmp_path, capsys):
    from tests.engine.test_cli import assert_clean_error, run_in_process

    model = tiny_family_models["sd1"][0]
    sketch = tmp_path / "sketch.png"
    Image.fromarray(drawing()).save(sketch)
    for path, fragment in damaged_files(sd1_controlnet[1], tmp_path).items():
        with pytest.raises(ModelLoadError, match=fragment) as error:
            generator_for(model, path)
        assert str(error.value).endswith(".") and str(error.value).count(". ") == 0
        result = run_in_process(capsys, "generate", "--model", model, "--prompt", "cat",
                                "--control", path, "--control-image", sketch, "--out",
                                tmp_path / "o.png")
        assert_clean_error(subprocess.CompletedProcess(result.args, result.returncode,
                                                       result.stdout, result.stderr), fragment)
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    with pytest.raises(ModelLoadError, match="is not a control model"):
        generator_for(model, text)


def test_generate_and_bench_take_a_controlnet_file(tiny_family_models, sd1_controlnet,
                                                   tmp_path, capsys, one_thread):
    from engine.bench.control import bench_control
    from tests.engine.test_cli import run_in_process

    model, control_file = tiny_family_models["sd1"][0], sd1_controlnet[1]
    sketch, out = tmp_path / "sketch.png", tmp_path / "out.png"
    Image.fromarray(drawing()).save(sketch)
    result = run_in_process(capsys, "generate", "--model", model, "--prompt", "cat",
                            "--control", control_file, "--control-image", sketch, "--out", out)
    assert result.returncode == 0, result.stderr
    expected, _ = generator_for(model, control_file).generate(
        GenerateRequest("cat", control_image=np.asarray(Image.open(sketch).convert("RGB"))))
    with Image.open(out) as image:
        assert max_difference(np.asarray(image), expected) == 0
    report = bench_control(str(model), str(control_file), "cpu", repeats=2)
    assert report["kind"] == "controlnet" and report["control_type"] == "lineart"


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_sd2_and_sdxl_controlnet_files_load_the_same_weights(tiny_family_models, family,
                                                             tmp_path):
    """SD 2.x's linear projections and head width, SDXL's added text-and-size embedding: the
    family comes from the keys, the rest from the shapes."""
    from engine.pipeline.tiny_control import build_controlnet_like
    from engine.runtime.control import load_control
    from engine.runtime.torch_backend import TorchBackend

    backend = TorchBackend.load(str(tiny_family_models[family][0]), "cpu")
    folder = build_controlnet_like(backend.parts.unet, backend.latent_channels,
                                   tmp_path / "folder")
    control_file = write_controlnet_file(folder, tmp_path / f"{family}-canny.safetensors")
    from_folder = load_control(folder, backend)
    expected = from_folder.network.state_dict()
    loaded = load_control(control_file, backend)
    assert loaded.control_type == "canny" and loaded.kind == "controlnet"
    for name in ("block_out_channels", "down_block_types", "layers_per_block",
                 "attention_head_dim", "cross_attention_dim", "use_linear_projection",
                 "norm_num_groups", "addition_embed_type", "addition_time_embed_dim",
                 "projection_class_embeddings_input_dim", "conditioning_embedding_out_channels"):
        assert loaded.network.config[name] == from_folder.network.config[name], name
    assert expected.keys() == loaded.network.state_dict().keys()
    assert all(torch.equal(expected[key], loaded.network.state_dict()[key]) for key in expected)
