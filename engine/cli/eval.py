"""`python -m engine eval`: score a model on the held-out emoji captions (fd, alignment, top5)
and, with the emoji recognizer, on plain names and hand-written phrases (recall, phrase)."""

from __future__ import annotations

import json
from pathlib import Path

from engine.api import BACKENDS, EngineError
from engine.cli.common import parse_timesteps
from engine.runtime.loading import ASSETS_DIR


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="Score a model on held-out emoji captions: fd, alignment, top5, seconds_per_image.")
    parser.add_argument("--model", help="model folder (default: the shipped embedded model)")
    parser.add_argument("--real", action="store_true",
                        help="score the real held-out images instead (the ceiling)")
    parser.add_argument("--steps", type=int, default=None,
                        help="student steps (1, 2 or 4; default: the count the student was "
                             "distilled for, as generate and the app)")
    parser.add_argument("--timesteps", default=None,
                        help="a student schedule to score instead of student.json's, e.g. "
                             "999,299 (decreasing, in 0...999)")
    parser.add_argument("--teacher-steps", type=int, default=0,
                        help="N > 0: the teacher's N-step DDIM sampler with CFG")
    parser.add_argument("--guidance", type=float, default=4.0, help="CFG scale (teacher)")
    parser.add_argument("--data", type=Path, default=Path("data/emoji"), help="dataset folder")
    parser.add_argument("--evaluator", type=Path, default=ASSETS_DIR / "evaluator",
                        help="evaluator folder (default: the shipped one in "
                             "assets/models/evaluator; train-evaluator makes others)")
    parser.add_argument("--recognizer", type=Path, default=ASSETS_DIR / "recognizer",
                        help="emoji recognizer folder for recall_* and phrase_* (default: the "
                             "shipped one; train-recognizer makes others)")
    parser.add_argument("--recall-names", type=int, default=500,
                        help="score recall on a fixed sample of this many emoji names (0: skip)")
    parser.add_argument("--phrases", type=int, default=-1,
                        help="score the first N hand-written evaluation prompts (-1: all 412, "
                             "0: skip)")
    parser.add_argument("--recall-only", action="store_true",
                        help="score recall_* and phrase_* alone (no dataset or evaluator needed)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N held-out captions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sketch", action="store_true",
                        help="draw each held-out caption over its held-out sketch (sketch mode); "
                             "sketch_f1 then says how closely the images follow the sketches")
    parser.add_argument("--as-typed", action="store_true",
                        help="draw every prompt exactly as written, without matching it to the "
                             "model's vocabulary (the nearest training prompt; models whose "
                             "folder has vocabulary.safetensors)")
    parser.add_argument("--backend", choices=BACKENDS, default="torch")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.set_defaults(run=run)


def run(args) -> int:
    from engine.embedded.dataset import load_dataset
    from engine.eval.evaluator import load_evaluator
    from engine.eval.metrics import generate_images, pipeline_generator

    if (args.steps is not None and args.steps < 1) or min(args.teacher_steps, args.limit,
                                                          args.recall_names, args.phrases + 1) < 0:
        raise EngineError("--steps must be positive, --teacher-steps, --limit and "
                          "--recall-names not negative, and --phrases -1 or more.")
    timesteps = parse_timesteps(args.timesteps) if args.timesteps else None
    if timesteps and args.steps not in (None, len(timesteps)):
        raise EngineError(f"--steps {args.steps} disagrees with the {len(timesteps)} "
                          "--timesteps; give one of them.")
    if args.recall_only and args.real:
        raise EngineError("--recall-only scores generated images; --real needs the dataset.")
    generate_one, steps, model = None, args.steps, "real"
    if not args.real:
        from engine.cli.common import model_or_default

        model = model_or_default(args.model)
        generate_one, steps = pipeline_generator(model, args.steps, args.teacher_steps,
                                                 args.guidance, args.device, 128,
                                                 args.backend, timesteps, sketches=args.sketch,
                                                 match_prompt=not args.as_typed)
    result = {"model": str(model), "steps": None if args.teacher_steps else steps,
              "teacher_steps": args.teacher_steps, "guidance": args.guidance,
              "prompt_matching": getattr(generate_one, "prompt_matching", False)}
    data = None
    if not args.recall_only:
        evaluator = load_evaluator(args.evaluator)  # its absence is the likelier mistake
        data = load_dataset(args.data)
        result.update(heldout_results(args, evaluator, data, generate_one))
    if args.recall_names or args.phrases:
        draw = generate_one and (lambda prompts: generate_images(generate_one, prompts,
                                                                 args.seed)[0])
        result.update(recall_results(args, data, draw))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>18}: {value}")
    return 0


def heldout_results(args, evaluator, data, generate_one) -> dict:
    """fd, alignment, top5/top1, sketch_f1, sharpness and timing on the held-out captions."""
    from engine.embedded.decoder_gan import sharpness
    from engine.embedded.latents import encode_captions, load_minilm
    from engine.eval.metrics import generate_images, score_images
    from engine.eval.sketch_metrics import mean_stroke_f1

    ids = [i for i, held in enumerate(data.heldout) if held]
    if args.limit:
        ids = ids[:args.limit]
    if len(ids) < 2:
        raise EngineError("Scoring needs at least two held-out images in the dataset.")
    captions = [data.captions[i] for i in ids]
    real, sketches = data.images[ids], data.sketches[ids]
    _, pooled = encode_captions(load_minilm(), captions)
    images, seconds = real, 0.0
    if generate_one is not None:
        images, seconds = generate_images(generate_one, captions, args.seed,
                                          sketches if args.sketch else None)
    return {"images": len(captions), **score_images(evaluator, images, pooled, real),
            "sketch_f1": mean_stroke_f1(sketches, images), "sketch": args.sketch,
            "sharpness": sharpness(images, real), "seconds_per_image": seconds}


def recall_results(args, data, draw) -> dict:
    """recall_top1/top5 on plain names and phrase_top1/top5 on the evaluation prompts, with
    their per-group tables; draw(prompts) makes the images (None: the real renders)."""
    from engine.embedded.dataset import base_caption
    from engine.embedded.phrases import load_eval_phrases, load_phrase_table
    from engine.eval.recall import RecallSet, name_set, phrase_set, recall_scores
    from engine.eval.recognizer import load_recognizer

    recognizer = load_recognizer(args.recognizer)
    classes = recognizer.config.classes
    group_of = {caption: entry.group for caption, entry in load_phrase_table().items()}
    first_image = {}
    for index, caption in enumerate(data.captions if data is not None else []):
        first_image.setdefault(base_caption(caption), index)
    results = {}
    sets = {}
    if args.recall_names:
        sets["recall"] = name_set(classes, group_of, args.recall_names)
    if args.phrases:
        sets["phrase"] = phrase_set(load_eval_phrases(), classes, max(args.phrases, 0))
    for name, recall_set in sets.items():
        if draw is None:  # the real render of an accepted emoji, where the dataset has one
            keep = [i for i, ok in enumerate(recall_set.accepted)
                    if classes[ok[0]] in first_image]
            recall_set = RecallSet(*([values[i] for i in keep] for values in (
                recall_set.prompts, recall_set.accepted, recall_set.groups)))
            if not keep:
                continue
            images = data.images[[first_image[classes[ok[0]]] for ok in recall_set.accepted]]
        else:
            images = draw(recall_set.prompts)
        scores = recall_scores(recognizer, images, recall_set)
        results.update({f"{name}_top1": scores["top1"], f"{name}_top5": scores["top5"],
                        f"{name}_count": len(recall_set.prompts),
                        f"{name}_by_group": scores["by_group"]})
    return results
