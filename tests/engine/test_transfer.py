"""`python -m engine transfer`: student + w (teacher_after - teacher_before), for a student
model folder and for a UNet-only student over a single-file teacher, with clean refusals."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from engine.distill.transfer import transferred_state
from tests.engine.original_layout import component_state
from tests.engine.test_cli import assert_clean_error, run_in_process


def perturbed_copy(source, target, seed: int):
    """A copy of a model folder whose UNet weights are moved by seeded noise."""
    shutil.copytree(source, target)
    state, _ = component_state(target, "unet")
    generator = torch.Generator().manual_seed(seed)
    moved = {key: value + 0.01 * torch.randn(value.shape, generator=generator)
             for key, value in state.items()}
    weights = next(target.joinpath("unet").glob("*.safetensors"))
    save_file(moved, str(weights))
    return target


def unet_of(folder):
    return component_state(folder, "unet")[0]


def test_transferred_state_is_the_weighted_sum_in_the_students_dtype():
    student = {"w": torch.tensor([1.0, 2.0], dtype=torch.float16), "n": torch.tensor([3])}
    before = {"w": torch.tensor([0.5, 0.5]), "n": torch.tensor([4])}
    after = {"w": torch.tensor([1.5, 0.0]), "n": torch.tensor([5])}
    state = transferred_state(student, before, after, 0.5)
    assert state["w"].dtype == torch.float16
    assert state["w"].tolist() == [1.5, 1.75]
    assert state["n"].tolist() == [3]  # integer buffers stay the student's


def test_a_distillation_weight_keeps_that_share_of_the_students_own_change():
    student = {"w": torch.tensor([1.0, 2.0])}
    before = {"w": torch.tensor([0.5, 0.5])}
    after = {"w": torch.tensor([1.5, 0.0])}
    # before + 0.6 (student - before) + 1 (after - before)
    assert transferred_state(student, before, after, 1.0, 0.6)["w"].tolist() == \
        pytest.approx([1.8, 0.9])
    # weight 0, distillation weight 0: the teacher the student was distilled from
    assert transferred_state(student, before, after, 0.0, 0.0)["w"].tolist() == [0.5, 0.5]


def test_a_student_folder_follows_its_teacher(tiny_student_dir, tmp_path, capsys):
    before = tiny_student_dir  # a DMD student starts at its teacher's weights
    student = perturbed_copy(tiny_student_dir, tmp_path / "student", seed=1)
    (student / "onnx").mkdir()
    after = perturbed_copy(tiny_student_dir, tmp_path / "after", seed=2)
    out = tmp_path / "moved"
    result = run_in_process(capsys, "transfer", "--student", student, "--teacher-before",
                            before / "unet", "--teacher-after", after, "--out", out,
                            "--precision", "fp32")
    assert result.returncode == 0, result.stderr
    moved, s, b, a = (unet_of(folder) for folder in (out, student, before, after))
    for key in s:
        torch.testing.assert_close(moved[key], s[key] + a[key] - b[key], rtol=0, atol=1e-6)
    assert not (out / "onnx").exists() and (out / "vae").is_dir()
    config = json.loads((out / "student.json").read_text())
    assert config["timesteps"] == [999] and config["teacher"] == str(after)
    assert config["transfers"][0]["weight"] == 1.0
    assert config["transfers"][0]["distillation_weight"] == 1.0
    image = tmp_path / "frame.png"
    assert run_in_process(capsys, "generate", "--model", out, "--prompt", "red apple",
                          "--out", image).returncode == 0
    assert image.is_file()

    unchanged = tmp_path / "unchanged"
    assert run_in_process(capsys, "transfer", "--student", student, "--teacher-before", before,
                          "--teacher-after", after, "--out", unchanged, "--weight", 0,
                          "--precision", "fp32").returncode == 0
    assert all(torch.equal(unet_of(unchanged)[key], s[key]) for key in s)

    undistilled = tmp_path / "undistilled"  # none of the distillation kept: teacher-after
    assert run_in_process(capsys, "transfer", "--student", student, "--teacher-before", before,
                          "--teacher-after", after, "--out", undistilled,
                          "--distillation-weight", 0, "--precision", "fp32").returncode == 0
    for key in s:
        torch.testing.assert_close(unet_of(undistilled)[key], a[key], rtol=0, atol=1e-6)
    record = json.loads((undistilled / "student.json").read_text())["transfers"][-1]
    assert record["distillation_weight"] == 0.0


def test_a_unet_file_student_moves_onto_a_fine_tune_of_a_single_file_base(
        tiny_family_models, tmp_path, capsys):
    folder, single_file = tiny_family_models["sd1"]
    student_file = tmp_path / "release" / "student_unet.safetensors"
    student_file.parent.mkdir()
    save_file({key: value * 1.01 for key, value in unet_of(folder).items()}, str(student_file))
    (student_file.parent / "student.json").write_text(json.dumps({"timesteps": [399]}))
    fine_tune = perturbed_copy(folder, tmp_path / "fine-tune", seed=3)
    out = tmp_path / "fast-fine-tune"
    result = run_in_process(capsys, "transfer", "--student", student_file, "--teacher-before",
                            single_file, "--teacher-after", fine_tune, "--out", out)
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in out.iterdir()) == ["student.json", "unet"]
    moved, base, tuned = unet_of(out), unet_of(folder), unet_of(fine_tune)
    key = "conv_in.weight"
    assert moved[key].dtype == torch.float16
    torch.testing.assert_close(moved[key].float(), base[key] * 1.01 + tuned[key] - base[key],
                               rtol=0, atol=2e-3)
    info = run_in_process(capsys, "info", "--model", fine_tune, "--unet", out, "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["student"]["timesteps"] == [399]


@pytest.mark.parametrize("problem", ["architecture", "exists", "weight", "distillation"])
def test_bad_transfers_are_one_sentence(problem, tiny_student_dir, tiny_sketch_model_dir,
                                        tmp_path, capsys):
    after = {"architecture": tiny_sketch_model_dir}.get(problem, tiny_student_dir)
    original = unet_of(tiny_student_dir)
    out = tmp_path / "out"
    if problem == "exists":
        out.mkdir()
    weight = 9 if problem == "weight" else 1
    kept = "nan" if problem == "distillation" else 1
    result = run_in_process(capsys, "transfer", "--student", tiny_student_dir,
                            "--teacher-before", tiny_student_dir, "--teacher-after", after,
                            "--out", out, "--weight", weight, "--distillation-weight", kept)
    fragment = {"architecture": "not one UNet architecture", "exists": "already exists",
                "weight": "--weight must be",
                "distillation": "--distillation-weight must be"}[problem]
    assert_clean_error(result, fragment)
    assert problem == "exists" or not out.exists()
    unchanged = unet_of(tiny_student_dir)
    assert all(torch.equal(value, unchanged[key]) for key, value in original.items())
