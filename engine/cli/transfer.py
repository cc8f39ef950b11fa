"""`python -m engine transfer`: move a distilled student onto a further-trained or fine-tuned
teacher by weight arithmetic (engine.distill.transfer), without distilling again."""

from __future__ import annotations

import math
from pathlib import Path

from engine.api import EngineError

PRECISIONS = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "transfer",
        help="Give a distilled student what its teacher learned since: student + weight x "
             "(teacher-after - teacher-before), written as a new model folder.",
        description="Writes OUT = the student with its UNet replaced by student + weight x "
                    "(teacher-after - teacher-before) (task arithmetic). Use it when the "
                    "teacher the student was distilled from has trained further or been "
                    "fine-tuned: the student follows without a new distillation. Each of the "
                    "three is a model folder, 'embedded'/'embedded-student', a unet/ folder, "
                    "a UNet-only file or a single-file checkpoint of one architecture.")
    parser.add_argument("--student", required=True,
                        help="the distilled student (model folder, or a UNet file such as a "
                             "DMD2 release)")
    parser.add_argument("--teacher-before", required=True,
                        help="the teacher the student was distilled from")
    parser.add_argument("--teacher-after", required=True,
                        help="the teacher to move to (trained further, or a fine-tune of "
                             "teacher-before)")
    parser.add_argument("--out", type=Path, required=True,
                        help="new folder: a whole model when --student is a model folder, "
                             "else unet/ and student.json to load with --model TEACHER_AFTER "
                             "--unet OUT")
    parser.add_argument("--weight", type=float, default=1.0,
                        help="how much of the teacher's change to add (default 1: all of it)")
    parser.add_argument("--distillation-weight", type=float, default=1.0,
                        help="how much of the distillation's own change (student - "
                             "teacher-before) to keep (default 1: all of it; below 1 moves "
                             "the student toward teacher-after)")
    parser.add_argument("--precision", choices=tuple(PRECISIONS), default="fp16",
                        help="dtype the UNets are loaded and saved in (default fp16, as models "
                             "ship; the sum is computed in fp32)")
    parser.set_defaults(run=run)


def replaces_student(out: Path, student: str) -> bool:
    """Whether out is the student model folder itself (an in-place update)."""
    from engine.distill.transfer import is_model_folder
    from engine.runtime.loading import resolve_model_dir

    return is_model_folder(student) and out.resolve() == resolve_model_dir(student).resolve()


def run(args) -> int:
    import torch

    from engine.distill.transfer import transfer_student

    if not math.isfinite(args.weight) or not 0 <= args.weight <= 4:
        raise EngineError("--weight must be a number from 0 to 4 (1 adds the teacher's whole "
                          "change).")
    if not math.isfinite(args.distillation_weight) or not 0 <= args.distillation_weight <= 4:
        raise EngineError("--distillation-weight must be a number from 0 to 4 (1 keeps the "
                          "distillation's whole change).")
    if args.out.exists() and not replaces_student(args.out, args.student):
        raise EngineError(f"{args.out} already exists; choose a new --out folder (or the "
                          "student's own folder, to update it in place).")
    transfer_student(args.student, args.teacher_before, args.teacher_after, args.out,
                     args.weight, getattr(torch, PRECISIONS[args.precision]),
                     args.distillation_weight)
    kept = ("" if args.distillation_weight == 1
            else f", keeping {args.distillation_weight:g} x the distillation's change")
    print(f"wrote {args.out}: the student plus {args.weight:g} x the teacher's change{kept}")
    return 0
