"""Single-file checkpoints and UNet-only files: the same images as the diffusers folders they
were written from, family detection, and one clear sentence for every bad file."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.api import GenerateRequest, ModelLoadError, ModelOptions
from engine.pipeline.generator import Generator
from engine.runtime.loading import load_pipeline
from engine.runtime.sd_configs import detect_family
from engine.runtime.torch_backend import TorchBackend
from tests.engine.original_layout import component_state, folder_to_original, unet_to_original

TINY = ModelOptions(size=32)  # the tiny models render 32 px; a family's native size is larger
REQUESTS = (GenerateRequest("red apple", seed=1), GenerateRequest("blue car", seed=2),
            GenerateRequest("red apple", seed=1, teacher_steps=2, guidance=3.0))


def images(model, options=None, requests=REQUESTS):
    generator = Generator(TorchBackend.load(str(model), "cpu", options=options))
    return [generator.generate(request)[0] for request in requests]


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_a_single_file_draws_exactly_what_its_folder_draws(tiny_family_models, family):
    """Same weights after conversion (torch.equal), same schedule and tokenizer, hence the
    same pixels: max difference 0 for one-step frames and a guided two-step teacher run."""
    folder, checkpoint = tiny_family_models[family]
    assert detect_family(load_file(str(checkpoint))) == family
    from_folder, from_file = load_pipeline(folder), load_pipeline(checkpoint, options=TINY)
    assert from_file.family == {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}[family]
    for name in ("unet", "vae"):
        expected = getattr(from_folder, name).state_dict()
        loaded = getattr(from_file, name).state_dict()
        assert expected.keys() == loaded.keys()
        assert all(torch.equal(expected[key], loaded[key]) for key in expected)
    assert from_file.schedule.prediction_type == from_folder.schedule.prediction_type == (
        "v_prediction" if family == "sd2" else "epsilon")
    for expected, drawn in zip(images(folder), images(checkpoint, TINY), strict=True):
        assert np.abs(expected.astype(int) - drawn.astype(int)).max() == 0


def test_a_ckpt_loads_through_safe_unpickling(tiny_family_models, tmp_path):
    folder, checkpoint = tiny_family_models["sd1"]
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(checkpoint)), "global_step": 10}, ckpt)
    requests = REQUESTS[:1]
    assert np.array_equal(images(ckpt, TINY, requests)[0], images(folder, None, requests)[0])


class RunsCode:
    """A pickle that would run code when unpickled without weights_only."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_bad_files_give_one_sentence(tiny_family_models, tmp_path):
    _, checkpoint = tiny_family_models["sd1"]
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    unknown = tmp_path / "unknown.safetensors"
    save_file({"model.diffusion_model.conv.weight": torch.zeros(2),
               "encoder.weight": torch.zeros(2)}, str(unknown))
    no_unet = tmp_path / "no_unet.safetensors"
    save_file({"weight": torch.zeros(2)}, str(no_unet))
    marker = tmp_path / "code-ran"
    pickled_code = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": RunsCode(marker)}, pickled_code)
    truncated_ckpt = tmp_path / "truncated.ckpt"
    torch.save({"x": torch.zeros(100)}, truncated_ckpt)
    truncated_ckpt.write_bytes(truncated_ckpt.read_bytes()[:200])
    cases = {truncated: "is not a complete safetensors file (truncated or damaged).",
             unknown: "text encoder keys match no known layout",
             no_unet: "has no UNet in the original layout",
             pickled_code: "contains pickled code, which the engine refuses to run",
             truncated_ckpt: "is not a complete checkpoint"}
    for path, fragment in cases.items():
        with pytest.raises(ModelLoadError) as caught:
            load_pipeline(path)
        message = str(caught.value)
        assert fragment in message and message.count(". ") == 0 and "\n" not in message
    assert not marker.exists()  # the pickled code never ran


@pytest.fixture(scope="module")
def student_unet(tiny_family_models, tmp_path_factory):
    """An SDXL base, another random SDXL UNet saved three ways, and the folder that has it."""
    from engine.pipeline.tiny import build_tiny_pipeline

    base, _ = tiny_family_models["sdxl"]
    root = tmp_path_factory.mktemp("unet")
    other = build_tiny_pipeline(root / "other", family="sdxl", seed=7)
    swapped = root / "swapped"
    shutil.copytree(base, swapped)
    shutil.rmtree(swapped / "unet")
    shutil.copytree(other / "unet", swapped / "unet")
    state, config = component_state(other, "unet")
    release = root / "release"
    release.mkdir()
    save_file(state, str(release / "student_unet.safetensors"))
    (release / "student.json").write_text(json.dumps({"timesteps": [399]}))
    original = root / "original_unet.safetensors"
    save_file({key: value.contiguous() for key, value in unet_to_original(state, config).items()},
              str(original))
    torch_bin = root / "student_unet.bin"
    torch.save(state, torch_bin)
    return {"base": base, "swapped": swapped, "diffusers": release / "student_unet.safetensors",
            "original": original, "bin": torch_bin}


def test_a_unet_file_over_a_base_matches_the_folder_with_that_unet(student_unet):
    """DMD2's way: the student UNet replaces the base's; timesteps from student.json beside
    it, or from the option; diffusers and original keys, .safetensors and .bin alike."""
    student_requests = REQUESTS[:2]
    expected = images(student_unet["swapped"], ModelOptions(student_timesteps=(399,)),
                      student_requests)
    base = images(student_unet["base"])
    assert not np.array_equal(expected[0], base[0])  # the UNet changes the frame
    beside = Generator(TorchBackend.load(str(student_unet["base"]), "cpu",
                                         options=ModelOptions(unet=str(student_unet["diffusers"]))))
    assert beside.default_timesteps == [399]
    assert beside.backend.student_config["teacher"] == str(student_unet["base"])
    assert np.array_equal(beside.generate(REQUESTS[2])[0], base[2])  # its teacher: the base
    for name in ("diffusers", "original", "bin"):
        options = ModelOptions(unet=str(student_unet[name]), student_timesteps=(399,))
        drawn = images(student_unet["base"], options, student_requests)
        for want, got in zip(expected, drawn, strict=True):
            assert np.array_equal(want, got), name


def test_student_timesteps_reach_the_generator(tiny_family_models):
    folder, _ = tiny_family_models["sdxl"]
    generator = Generator(TorchBackend.load(str(folder), "cpu", options=ModelOptions(
        student_timesteps=(999, 749, 499, 249))))
    assert generator.default_timesteps == [999, 749, 499, 249] and generator.default_steps == 4
    with pytest.raises(ModelLoadError, match="must be 1 to 16 whole numbers from 0 to 999"):
        load_pipeline(folder, options=ModelOptions(student_timesteps=(1000,)))


def test_a_unet_for_another_architecture_is_refused(tiny_family_models, tmp_path):
    base, _ = tiny_family_models["sdxl"]
    sd1_folder, _ = tiny_family_models["sd1"]
    state, _ = component_state(sd1_folder, "unet")
    wrong = tmp_path / "sd1_unet.safetensors"
    save_file(state, str(wrong))
    with pytest.raises(ModelLoadError, match="does not fit the base model's UNet; it was made "
                                             "for another architecture"):
        load_pipeline(base, options=ModelOptions(unet=str(wrong)))
    with pytest.raises(ModelLoadError, match="is not a .safetensors, .bin or .ckpt file"):
        load_pipeline(base, options=ModelOptions(unet=str(tmp_path / "missing.safetensors")))


def test_onnx_runs_torch_for_a_single_file_or_load_options(tiny_family_models, student_unet):
    pytest.importorskip("onnxruntime")
    from engine.runtime import choose_backend, create_backend

    _, checkpoint = tiny_family_models["sd1"]
    assert choose_backend(str(checkpoint), "cpu") == "torch"
    backend = create_backend(str(checkpoint), "onnx", "cpu", options=TINY)
    assert backend.name == "torch" and "not a single-file checkpoint" in backend.notice
    sd1_folder, _ = tiny_family_models["sd1"]
    backend = create_backend(str(sd1_folder), "onnx", "cpu",
                             options=ModelOptions(student_timesteps=(499,)))
    assert backend.name == "torch" and "without load options" in backend.notice


def test_the_clip_tokenizer_is_clips(tiny_family_models):
    """Built from the shipped BPE vocabulary: CLIP's ids for a known sentence, its padding."""
    from engine.runtime.clip_vocab import VOCAB_SIZE, clip_tokenizer

    tokenizer = clip_tokenizer("clip")
    assert len(tokenizer) == VOCAB_SIZE == 49408
    assert tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    padded = clip_tokenizer("open_clip")("a cat", padding="max_length", max_length=6)
    assert padded["input_ids"] == [49406, 320, 2368, 49407, 0, 0]  # "!" is id 0
    assert tokenizer("a cat", padding="max_length", max_length=6)["input_ids"][-1] == 49407


def test_the_original_layout_covers_every_tensor(tiny_family_models):
    """The test converter writes every folder tensor (and SD 2.x's unused last text layer)."""
    folder, _ = tiny_family_models["sd2"]
    original = folder_to_original(folder, "sd2")
    layers = {key.split(".")[4] for key in original if ".resblocks." in key}
    assert layers == {"0", "1", "2"}  # two used layers + the dropped last one


def test_the_configs_and_vocabulary_ship_in_the_wheel():
    """pyproject's package-data carries the family configs and CLIP's vocabulary (with its
    licence), which single files need at run time."""
    from tests.engine.test_install import REPO, pyproject

    patterns = pyproject()["tool"]["setuptools"]["package-data"]["dmd_assets"]
    shipped = {path for pattern in patterns for path in (REPO / "assets").glob(pattern)}
    needed = [REPO / "assets/configs" / f"{family}.json" for family in ("sd1", "sd2", "sdxl")]
    needed += [REPO / "assets/tokenizers/clip" / name
               for name in ("bpe_simple_vocab_16e6.txt.gz", "LICENSE", "README.md")]
    assert set(needed) <= shipped
