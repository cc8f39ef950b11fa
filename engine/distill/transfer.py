"""Carry a distilled student over to a further-trained or fine-tuned teacher without
distilling again, tensor by tensor:

    student' = teacher_before + a (student - teacher_before) + w (teacher_after - teacher_before)

(a = 1: student + w (teacher_after - teacher_before)).

This is task arithmetic (Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023):
the weight difference that turned teacher_before into teacher_after is added to a student
that was distilled from teacher_before. LCM-LoRA (Luo et al. 2023) showed the converse, that
a distillation's weight difference carries over to fine-tunes of its base. It works when
the student stays close to its teacher in weight space, as a DMD student initialised from
its teacher does. a below 1 keeps only part of the distillation's own change; after the
embedded teacher trained on, that drew more emoji right than a = 1 (docs/embedded-training.md,
4d).
"""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path

import torch

from engine.api import ModelLoadError
from engine.runtime.loading import EMBEDDED_NAMES, load_component, read_json, resolve_model_dir

STUDENT_FILE = "student.json"
CACHE_FOLDERS = ("onnx", "onnx-fp16", "onnx-int8")  # exports made from the old UNet: not copied


def is_model_folder(source: str) -> bool:
    """Whether source names a whole model (an embedded name or a folder with unet/), not a
    UNet alone."""
    path = Path(source).expanduser()
    return source in EMBEDDED_NAMES or (path.is_dir() and (path / "unet" / "config.json").is_file())


def load_unet(source: str, base_unet, pooled_width: int | None, dtype: torch.dtype):
    """The UNet of a model folder or embedded name, a unet/ folder, a UNet-only file or a
    single-file checkpoint, in base_unet's architecture."""
    from diffusers import UNet2DConditionModel

    from engine.runtime.unet_file import load_unet_file

    if is_model_folder(source):
        return load_component(UNet2DConditionModel, resolve_model_dir(source) / "unet", dtype)
    return load_unet_file(source, base_unet, pooled_width, dtype)


def transferred_state(student: dict, before: dict, after: dict, weight: float,
                      distillation_weight: float = 1.0) -> dict:
    """student + weight (after - before) - (1 - distillation_weight) (student - before) for
    every floating tensor (the module's formula), computed in float32 and kept in the
    student's dtype; the three state dicts must share keys and shapes."""
    if student.keys() != before.keys() or student.keys() != after.keys():
        differing = sorted(set(student) ^ set(before) | set(student) ^ set(after))
        raise ModelLoadError(f"The student and the two teachers are not one UNet architecture "
                             f"({differing[0]} is not in all three).")
    state = {}
    for key, tensor in student.items():
        if not before[key].shape == after[key].shape == tensor.shape:
            raise ModelLoadError(f"The student and the two teachers are not one UNet "
                                 f"architecture ({key} has shapes {tuple(tensor.shape)}, "
                                 f"{tuple(before[key].shape)} and {tuple(after[key].shape)}).")
        if not tensor.is_floating_point():
            state[key] = tensor
            continue
        value = tensor.float() + weight * (after[key].float() - before[key].float())
        if distillation_weight != 1:
            value -= (1 - distillation_weight) * (tensor.float() - before[key].float())
        state[key] = value.to(tensor.dtype)
    return state


def student_config_of(source: str) -> dict:
    """The student.json of a student model folder, or beside a UNet file; {} when none."""
    from engine.runtime.unet_file import student_json_beside

    if is_model_folder(source):
        path = resolve_model_dir(source) / STUDENT_FILE
        return read_json(path) if path.is_file() else {}
    return student_json_beside(Path(source).expanduser())


def transfer_student(student: str, teacher_before: str, teacher_after: str, out: Path,
                     weight: float = 1.0, dtype: torch.dtype = torch.float32,
                     distillation_weight: float = 1.0) -> dict:
    """Write out/: a copy of the student model folder with the transferred UNet (or, for a
    UNet-only student, out/unet/ and out/student.json to load over teacher_after with
    --unet); returns the record added to student.json's "transfers"."""
    import json

    from engine.embedded.atomic import atomic_save_folder
    from engine.runtime.loading import load_pipeline

    base = load_pipeline(teacher_after, dtype=dtype)
    pooled_width = getattr(base.text_encoder, "pooled_size", None)
    student_unet = load_unet(student, base.unet, pooled_width, dtype)
    before_unet = load_unet(teacher_before, base.unet, pooled_width, dtype)
    state = transferred_state(student_unet.state_dict(), before_unet.state_dict(),
                              base.unet.state_dict(), weight, distillation_weight)
    del before_unet, base
    student_unet.load_state_dict(state)
    config = student_config_of(student)
    record = {"teacher_before": teacher_before, "teacher_after": teacher_after,
              "weight": weight, "distillation_weight": distillation_weight,
              "date": datetime.date.today().isoformat()}
    earlier = config.get("transfers")
    config["transfers"] = [*(earlier if isinstance(earlier, list) else []), record]
    whole_model = is_model_folder(student)
    if whole_model and "teacher" in config:
        config["teacher"] = teacher_after

    def write(folder: Path) -> None:
        if whole_model:
            shutil.copytree(resolve_model_dir(student), folder, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("unet", *CACHE_FOLDERS))
        student_unet.save_pretrained(folder / "unet")
        (folder / STUDENT_FILE).write_text(json.dumps(config, indent=1) + "\n")

    atomic_save_folder(Path(out), write)
    return record
