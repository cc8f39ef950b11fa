"""Turn the results folder of a remote GPU run (scripts/gpu/session.sh) into model folders.

python scripts/gpu/unpack.py RESULTS_DIR [--into runs]
-> from session.sh: runs/gpu-teacher/model (loadable teacher, MiniLM from its pip package),
   runs/gpu-student/student (loadable student); from refine.sh: runs/gpu-refine/student and
   runs/gpu-refine/student-middle (the deltas that came back + their teacher: with TEACHER_MIN
   the further-trained one, unpacked to runs/gpu-teacher-more/model, else the shipped one); plus
   the runs' logs, samples and metrics.
"""

from __future__ import annotations

import argparse
import json
import lzma
import shutil
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = "diffusion_pytorch_model.safetensors"
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]


def joined_weights(results_dir: Path, name: str, target: Path) -> bool:
    """Concatenate NAME.xz.partNN in order, decompress to target; False if absent."""
    parts = sorted(results_dir.glob(f"{name}.xz.part*"))
    if not parts:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_suffix(".tmp")
    decompressor = lzma.LZMADecompressor()
    with open(temp, "wb") as out:
        for part in parts:
            out.write(decompressor.decompress(part.read_bytes()))
    if not decompressor.eof:
        temp.unlink()
        raise SystemExit(f"{name}.xz.part*: the parts end before the xz stream does "
                         "(a part did not come back).")
    temp.replace(target)
    return True


def returned_teacher(results_dir: Path, runs: Path) -> Path | None:
    """refine.sh with TEACHER_MIN: the further-trained teacher as runs/gpu-teacher-more/model
    (MiniLM from its pip package); None when no teacher came back."""
    from diffusers import UNet2DConditionModel

    from engine.embedded.export import export_model_folder

    unet_dir = runs / "gpu-teacher-more" / "unet"
    if not joined_weights(results_dir, "teacher-unet", unet_dir / WEIGHTS):
        return None
    shutil.copy(REPO / "assets" / "models" / "teacher" / "unet" / "config.json", unet_dir)
    training_file = runs / "gpu-teacher-more" / "model" / "training.json"
    training = json.loads(training_file.read_text()) if training_file.is_file() else {}
    unet = UNet2DConditionModel.from_pretrained(str(unet_dir))
    shutil.rmtree(unet_dir)
    return export_model_folder(unet, REPO / "assets" / "models" / "teacher" / "vae",
                               runs / "gpu-teacher-more" / "model", training)


def unpack_refined(results_dir: Path, run: Path) -> None:
    """refine.sh's deltas + their teacher (the one that came back, else the shipped one) ->
    loadable student folders in run."""
    from delta import applied
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load, load_file

    from engine.distill.run_folder import export_student

    teacher_dir = returned_teacher(results_dir, run.parent) or REPO / "assets/models/teacher"
    print(f"teacher: {teacher_dir}")
    teacher = load_file(str(teacher_dir / "unet" / WEIGHTS))
    student_json = json.loads((run / "student" / "student.json").read_text())
    for name, folder in (("student-delta", "student"), ("middle-delta", "student-middle")):
        delta_file = run / f"{name}.safetensors"
        if not joined_weights(results_dir, name, delta_file):
            print(f"no {name} came back")
            continue
        unet = UNet2DConditionModel.from_config(
            UNet2DConditionModel.load_config(str(teacher_dir / "unet")))
        unet.load_state_dict(applied(teacher, load(delta_file.read_bytes())))
        delta_file.unlink()
        export_student(run / folder, teacher_dir, unet, student_json)
        print(f"{name}: {run / folder}")


def main() -> int:
    from diffusers import UNet2DConditionModel

    from engine.distill.run_folder import export_student
    from engine.embedded.export import export_model_folder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--into", type=Path, default=REPO / "runs")
    args = parser.parse_args()
    with tarfile.open(args.results_dir / "results.tar.gz") as tar:
        tar.extractall(args.into, filter="data")
    if any(args.results_dir.glob("student-delta.xz.part*")):  # refine.sh sent these
        unpack_refined(args.results_dir, args.into / "gpu-refine")
        return 0
    teacher_run = args.into / "gpu-teacher"
    unet_dir = teacher_run / "model" / "unet"
    if not joined_weights(args.results_dir, "teacher-unet", unet_dir / WEIGHTS):
        print("no teacher weights came back")
        return 1
    training = json.loads((teacher_run / "model" / "training.json").read_text())
    unet = UNet2DConditionModel.from_pretrained(str(unet_dir))
    teacher_dir = export_model_folder(unet, REPO / "assets" / "models" / "teacher" / "vae",
                                      teacher_run / "model", training)
    print(f"teacher: {teacher_dir} (step {training.get('teacher_steps')})")
    student_run = args.into / "gpu-student"
    student_unet_dir = student_run / "student" / "unet"
    if joined_weights(args.results_dir, "student-unet",
                      student_unet_dir / WEIGHTS):
        student_json = json.loads((student_run / "student" / "student.json").read_text())
        student = UNet2DConditionModel.from_pretrained(str(student_unet_dir))
        shutil.rmtree(student_run / "student")
        export_student(student_run / "student", teacher_dir, student, student_json)
        print(f"student: {student_run / 'student'} ({student_json.get('training_steps')} steps)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
