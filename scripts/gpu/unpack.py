"""Turn what a GPU session sent back ($OUT of scripts/gpu/session.sh) into model folders here.

python scripts/gpu/unpack.py FILES_AT [--into runs]
-> runs/gpu-teacher/model (loadable teacher, MiniLM from its pip package), runs/gpu-student/
   student (loadable student), plus the sessions' logs, samples and metrics.
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
sys.path.insert(0, str(REPO))


def joined_weights(files_at: Path, name: str, target: Path) -> bool:
    """Concatenate NAME-unet.xz.partNN in order, decompress to target; False if absent."""
    parts = sorted(files_at.glob(f"{name}-unet.xz.part*"))
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
        raise SystemExit(f"{name}-unet.xz.part*: the parts end before the xz stream does "
                         "(a part did not come back).")
    temp.replace(target)
    return True


def main() -> int:
    from diffusers import UNet2DConditionModel

    from engine.distill.run_folder import export_student
    from engine.embedded.export import export_model_folder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files_at", type=Path)
    parser.add_argument("--into", type=Path, default=REPO / "runs")
    args = parser.parse_args()
    with tarfile.open(args.files_at / "results.tar.gz") as tar:
        tar.extractall(args.into, filter="data")
    teacher_run = args.into / "gpu-teacher"
    unet_dir = teacher_run / "model" / "unet"
    if not joined_weights(args.files_at, "teacher", unet_dir / WEIGHTS):
        print("no teacher weights came back")
        return 1
    training = json.loads((teacher_run / "model" / "training.json").read_text())
    unet = UNet2DConditionModel.from_pretrained(str(unet_dir))
    teacher_dir = export_model_folder(unet, REPO / "assets" / "models" / "teacher" / "vae",
                                      teacher_run / "model", training)
    print(f"teacher: {teacher_dir} (step {training.get('teacher_steps')})")
    student_run = args.into / "gpu-student"
    student_unet_dir = student_run / "student" / "unet"
    if joined_weights(args.files_at, "student",
                      student_unet_dir / WEIGHTS):
        student_json = json.loads((student_run / "student" / "student.json").read_text())
        student = UNet2DConditionModel.from_pretrained(str(student_unet_dir))
        shutil.rmtree(student_run / "student")
        export_student(student_run / "student", teacher_dir, student, student_json)
        print(f"student: {student_run / 'student'} ({student_json.get('training_steps')} steps)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
