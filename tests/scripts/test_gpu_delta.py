"""scripts/gpu/delta.py: weights carried to a GPU as xz files and fp16 deltas come back whole."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu" / "delta.py"


def run(*args: Path | str) -> None:
    subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], check=True, timeout=120)


def test_a_student_rebuilt_from_teacher_and_delta_matches_to_fp16_rounding(tmp_path):
    generator = torch.Generator().manual_seed(0)
    teacher = {"conv.weight": torch.randn(64, 32, generator=generator).half(),
               "conv.bias": torch.randn(64, generator=generator).half()}
    student = {k: (v.float() * 1.05 + 0.01).half() for k, v in teacher.items()}
    save_file(teacher, tmp_path / "teacher.safetensors")
    # a checkpoint's student: fp32, keys under "unet."
    save_file({f"unet.{k}": v.float() for k, v in student.items()} | {"extra": torch.ones(1)},
              tmp_path / "model.safetensors")
    run("xz", tmp_path / "teacher.safetensors", tmp_path / "teacher.xz")
    run("unxz", tmp_path / "teacher.xz", tmp_path / "teacher-again.safetensors")
    assert (tmp_path / "teacher-again.safetensors").read_bytes() == \
        (tmp_path / "teacher.safetensors").read_bytes()
    run("delta", tmp_path / "teacher.safetensors", tmp_path / "model.safetensors",
        tmp_path / "delta.xz")
    run("apply", tmp_path / "teacher.safetensors", tmp_path / "delta.xz",
        tmp_path / "student.safetensors")
    rebuilt = load_file(tmp_path / "student.safetensors")
    assert rebuilt.keys() == student.keys()
    for key, value in student.items():
        assert rebuilt[key].dtype == torch.float16
        # one fp16 rounding of the delta and one of the sum
        bound = torch.finfo(torch.float16).eps * (
            value.float().abs() + (value.float() - teacher[key].float()).abs())
        assert ((rebuilt[key].float() - value.float()).abs() <= bound).all()
        assert not torch.equal(rebuilt[key], teacher[key])
