"""Control models (ControlNet, T2I-Adapter) on the tiny pipeline: strength, caching, start and
end, preprocessing, recipes, the CLI and bad input."""

from __future__ import annotations

import logging
import subprocess
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from engine.api import GenerateRequest, InvalidRequestError, ModelLoadError
from engine.pipeline.control_image import canny_edges, control_map
from engine.pipeline.tiny_control import build_tiny_adapter, build_tiny_controlnet


@pytest.fixture(scope="module")
def controlnet_dir(tmp_path_factory):
    return build_tiny_controlnet(tmp_path_factory.mktemp("control") / "tiny-scribble")


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    return build_tiny_adapter(tmp_path_factory.mktemp("control") / "tiny-adapter")


def load(model_dir, control_dir, control_type=None):
    from engine.pipeline.generator import Generator
    from engine.runtime import create_backend
    from engine.runtime.control import load_control

    backend = create_backend(str(model_dir), "torch", "cpu")
    return Generator(backend, control=load_control(control_dir, backend, control_type))


def drawing(row: int = 10) -> np.ndarray:
    """A dark stroke on white, as the canvas draws it."""
    image = np.full((32, 32, 3), 255, np.uint8)
    image[row:row + 3, 4:28] = 20
    return image


def max_difference(first: np.ndarray, second: np.ndarray) -> int:
    return int(np.abs(first.astype(np.int16) - second.astype(np.int16)).max())


@pytest.fixture(params=["controlnet", "adapter"])
def generator(request, tiny_student_dir, controlnet_dir, adapter_dir, one_thread):
    return load(tiny_student_dir, controlnet_dir if request.param == "controlnet"
                else adapter_dir)


def test_strength_0_is_exactly_the_frame_without_control_and_1_changes_it(generator):
    plain, _ = generator.generate(GenerateRequest("red apple", seed=3))
    off, _ = generator.generate(GenerateRequest("red apple", seed=3, control_image=drawing(),
                                                control_strength=0.0))
    on, _ = generator.generate(GenerateRequest("red apple", seed=3, control_image=drawing()))
    assert max_difference(off, plain) == 0
    assert max_difference(on, plain) > 0


def test_a_changed_sketch_changes_the_frame_and_an_unchanged_one_reuses_its_features(generator):
    first, _ = generator.generate(GenerateRequest("red apple", control_image=drawing(10)))
    assert (generator.control_cache_misses, generator.control_cache_hits) == (1, 0)
    for prompt in ("red apple", "red apples", "green apple"):  # keystrokes: the sketch stays
        generator.generate(GenerateRequest(prompt, control_image=drawing(10)))
    assert (generator.control_cache_misses, generator.control_cache_hits) == (1, 3)
    stroked, _ = generator.generate(GenerateRequest("red apple", control_image=drawing(20)))
    assert generator.control_cache_misses == 2
    assert max_difference(stroked, first) > 0
    again, _ = generator.generate(GenerateRequest("red apple", control_image=drawing(10)))
    assert max_difference(again, first) == 0 and generator.control_cache_hits == 4


def test_control_start_and_end_choose_the_steps_it_acts_on(tiny_model_dir, controlnet_dir,
                                                           one_thread):
    generator = load(tiny_model_dir, controlnet_dir)  # a teacher: 4 evenly spaced steps
    base = GenerateRequest("cat", seed=1, steps=4, control_image=drawing())
    plain, _ = generator.generate(GenerateRequest("cat", seed=1, steps=4))
    whole, _ = generator.generate(base)
    late, _ = generator.generate(GenerateRequest("cat", seed=1, steps=4, control_image=drawing(),
                                                 control_start=0.5))
    unused, _ = generator.generate(replace(base, control_start=0.9))  # no step at >= 0.9
    assert max_difference(unused, plain) == 0
    assert max_difference(late, plain) > 0 and max_difference(late, whole) > 0


def test_preprocessing_polarity_and_canny():
    stroke = drawing()
    scribble = control_map(stroke, "scribble")
    assert scribble[11, 10] == 255 and scribble[0, 0] == 0  # white lines on black
    assert set(np.unique(scribble)) == {0, 255}
    assert np.array_equal(control_map(255 - stroke, "scribble"), scribble)  # already a map
    lineart = control_map(stroke, "lineart")
    assert lineart[11, 10] == 235 and lineart[0, 0] == 0
    square = np.zeros((32, 32, 3), np.uint8)
    square[8:24, 8:24] = 255
    edges = canny_edges(square)
    assert edges[8:24, 7:9].any(axis=1).all()  # the left side is found along its length
    assert not edges[12:20, 12:20].any() and not edges[:4].any()  # flat areas have none
    assert edges.sum() < 4 * 16 * 2  # thin edges: at most two pixels across


def test_a_wrong_sized_control_image_is_resized(generator):
    big = np.asarray(Image.fromarray(drawing()).resize((96, 80)))
    image, _ = generator.generate(GenerateRequest("cat", control_image=big))
    assert image.shape == (32, 32, 3)


def test_a_control_image_without_a_control_model_is_one_sentence(tiny_student_dir, one_thread):
    from engine.pipeline.generator import Generator
    from engine.runtime import create_backend

    generator = Generator(create_backend(str(tiny_student_dir), "torch", "cpu"))
    with pytest.raises(InvalidRequestError, match="needs a control model"):
        generator.generate(GenerateRequest("cat", control_image=drawing()))


def test_a_control_model_for_another_base_model_is_refused(tiny_student_dir, tmp_path):
    wide = build_tiny_controlnet(tmp_path / "wide", cross_attention_dim=24)
    with pytest.raises(ModelLoadError, match="expects 24-d text states") as error:
        load(tiny_student_dir, wide)
    assert str(error.value).count(". ") == 0 and str(error.value).endswith(".")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load(tiny_student_dir, tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="is not a control model"):
        load(tiny_student_dir, tiny_student_dir)


def test_the_control_type_comes_from_control_json_the_name_or_the_flag(tiny_student_dir,
                                                                        tmp_path):
    named = build_tiny_controlnet(tmp_path / "sd15-canny-net", control_type=None)
    assert load(tiny_student_dir, named).control.control_type == "canny"
    assert load(tiny_student_dir, named, "lineart").control.control_type == "lineart"
    plain = build_tiny_adapter(tmp_path / "adapter", control_type=None)
    assert load(tiny_student_dir, plain).control.control_type == "scribble"


def test_onnx_with_a_control_model_falls_back_to_torch_with_a_notice(tiny_student_dir, caplog):
    from engine.runtime import create_backend

    with caplog.at_level(logging.WARNING):
        backend = create_backend(str(tiny_student_dir), "onnx", "cpu", control=True)
    assert backend.name == "torch" and "running PyTorch instead" in backend.notice
    assert "does not run control models" in caplog.text


def test_recipe_round_trip_draws_the_same_pixels(tiny_student_dir, controlnet_dir, tmp_path,
                                                 capsys):
    from tests.engine.test_cli import run_in_process

    sketch = tmp_path / "sketch.png"
    Image.fromarray(drawing()).resize((48, 48)).save(sketch)
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    result = run_in_process(capsys, "generate", "--model", tiny_student_dir, "--prompt", "cat",
                            "--control", controlnet_dir, "--control-image", sketch,
                            "--control-strength", 0.8, "--control-end", 0.9, "--out", first)
    assert result.returncode == 0, result.stderr
    from engine.recipe import read_recipe

    recipe = read_recipe(first)
    assert recipe.control_model == str(controlnet_dir) and recipe.control_type == "scribble"
    assert recipe.control_image.shape == (32, 32, 3)
    assert (recipe.control_strength, recipe.control_start, recipe.control_end) == (0.8, 0, 0.9)
    result = run_in_process(capsys, "generate", "--model", tiny_student_dir, "--recipe", first,
                            "--out", again)
    assert result.returncode == 0, result.stderr
    with Image.open(first) as image_a, Image.open(again) as image_b:
        assert max_difference(np.asarray(image_a), np.asarray(image_b)) == 0
    plain = tmp_path / "plain.png"
    run_in_process(capsys, "generate", "--model", tiny_student_dir, "--prompt", "cat", "--out",
                   plain)
    with Image.open(first) as image_a, Image.open(plain) as image_b:
        assert max_difference(np.asarray(image_a), np.asarray(image_b)) > 0


@pytest.mark.parametrize("flags, fragment", [
    (["--control", "MISSING", "--control-image", "SKETCH"], "does not exist"),
    (["--control", "CONTROL", "--control-image", "MISSING"], "control image"),
    (["--control-image", "SKETCH"], "needs --control MODEL"),
    (["--control", "CONTROL"], "needs --control-image"),
    (["--control", "CONTROL", "--control-image", "SKETCH", "--control-end", 0], "Control end"),
])
def test_bad_control_flags_exit_2_with_one_sentence(tiny_student_dir, controlnet_dir, tmp_path,
                                                   capsys, flags, fragment):
    from tests.engine.test_cli import assert_clean_error, run_in_process

    sketch = tmp_path / "sketch.png"
    Image.fromarray(drawing()).save(sketch)
    names = {"MISSING": tmp_path / "missing", "SKETCH": sketch, "CONTROL": controlnet_dir}
    result = run_in_process(capsys, "generate", "--model", tiny_student_dir, "--prompt", "cat",
                            *[names.get(flag, flag) for flag in flags], "--out",
                            tmp_path / "o.png")
    assert_clean_error(subprocess.CompletedProcess(result.args, result.returncode, result.stdout,
                                                   result.stderr), fragment)


def test_bench_control_measures_the_branch_and_reuses_the_embedding(tiny_student_dir,
                                                                    one_thread):
    from engine.bench.control import bench_control, control_report

    report = bench_control(str(tiny_student_dir), "tiny", "cpu", repeats=3)
    assert report["kind"] == "controlnet" and report["backend"] == "torch"
    for key in ("control_embed_ms", "control_branch_ms", "frame_ms", "frame_control_ms",
                "frame_control_stroke_ms"):
        assert report[key] > 0
    # the unchanged sketch misses once (warm-up), then hits; each stroke frame (4) misses
    assert (report["control_cache_hits"], report["control_cache_misses"]) == (3, 5)
    assert "control branch, one UNet call" in control_report(report)


def test_the_arch_bench_adds_the_controlnet_frame(one_thread):
    from engine.bench.gpu import bench_arch

    report = bench_arch("tiny-sd", "cpu", repeats=2, compile_mode="none", backends=("torch",),
                        control="scribble")
    names = {variant["variant"]: variant for variant in report["variants"]}
    assert names["torch eager + scribble ControlNet"]["fps"] > 0


@pytest.mark.parametrize("kind", ["controlnet", "adapter"])
def test_the_control_path_draws_the_same_frames_through_graphed_calls(
        kind, tiny_student_dir, controlnet_dir, adapter_dir, one_thread):
    """The UNet with control residuals and the ControlNet branch through GraphedCall (a
    capture with graph semantics stands in for CUDA's on a CPU): identical frames."""
    from engine.pipeline.generator import Generator
    from engine.runtime.control import load_control
    from engine.runtime.cuda_graphs import GraphedCall
    from engine.runtime.torch_backend import TorchBackend
    from tests.engine.test_cuda_graphs import Counting

    folder = controlnet_dir if kind == "controlnet" else adapter_dir
    plain = TorchBackend.load(str(tiny_student_dir), "cpu")
    eager = Generator(plain, control=load_control(folder, plain))
    staged = TorchBackend(plain.parts, "cpu")
    captures = Counting()
    staged._controlled_unet_calls = {
        intrablock: GraphedCall(call, f"controlled {intrablock}", capture=captures)
        for intrablock, call in staged._controlled_unet_calls.items()}
    control = load_control(folder, staged)
    control._branch = GraphedCall(control._branch, "the control branch", capture=captures)
    graphed = Generator(staged, control=control)
    for prompt, row in (("red apple", 10), ("blue car", 10), ("red apple", 20)):
        request = GenerateRequest(prompt, control_image=drawing(row))
        assert max_difference(graphed.generate(request)[0], eager.generate(request)[0]) == 0
    assert captures.calls == (2 if kind == "controlnet" else 1)  # captured once, replayed
    assert len(staged.graphed_stages()) == 2


def test_an_sdxl_controlnet_steers_an_sdxl_model_and_not_an_sd1_one(tmp_path, tiny_student_dir,
                                                                    one_thread):
    from engine.pipeline.tiny import build_tiny_pipeline
    from engine.pipeline.tiny_control import build_controlnet_like
    from engine.runtime import create_backend

    sdxl_dir = build_tiny_pipeline(tmp_path / "sdxl", family="sdxl", student_timesteps=[999])
    backend = create_backend(str(sdxl_dir), "torch", "cpu")
    control_dir = build_controlnet_like(backend.parts.unet, backend.latent_channels,
                                        tmp_path / "sdxl-scribble")
    generator = load(sdxl_dir, control_dir)
    plain, _ = generator.generate(GenerateRequest("cat", seed=2))
    off, _ = generator.generate(GenerateRequest("cat", seed=2, control_image=drawing(),
                                                control_strength=0.0))
    on, _ = generator.generate(GenerateRequest("cat", seed=2, control_image=drawing()))
    assert max_difference(off, plain) == 0 and max_difference(on, plain) > 0
    with pytest.raises(ModelLoadError, match="another base model"):
        load(tiny_student_dir, control_dir)


def test_control_steers_the_teacher_sampler_with_guidance(tiny_model_dir, adapter_dir,
                                                          controlnet_dir, one_thread):
    for folder in (controlnet_dir, adapter_dir):  # the doubled CFG batch takes the residuals
        generator = load(tiny_model_dir, folder)
        request = GenerateRequest("cat", seed=4, teacher_steps=3, guidance=3.0)
        plain, _ = generator.generate(request)
        off, _ = generator.generate(replace(request, control_image=drawing(),
                                            control_strength=0.0))
        on, _ = generator.generate(replace(request, control_image=drawing()))
        assert max_difference(off, plain) == 0 and max_difference(on, plain) > 0
