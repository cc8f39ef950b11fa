"""`python -m engine info`: what a model folder holds, or the recipe a saved image holds."""

from __future__ import annotations

import argparse
import json

from engine.cli.common import add_model_option_arguments, model_options, model_or_default
from engine.runtime.loading import read_prompt_suggestions


def count_parameters(module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def describe(parts, device: str) -> dict:
    """Components, parameter counts, schedule and conditioning of loaded PipelineParts."""
    schedule = parts.schedule
    text_models = getattr(parts.text_encoder, "models", (parts.text_encoder.model,))
    return {
        "model_dir": str(parts.model_dir),
        "device": device,
        "kind": "student" if parts.student_config else "teacher",
        "image_size": parts.image_size,
        "latent": [parts.latent_channels, parts.latent_size, parts.latent_size],
        "conditioning_channels": parts.conditioning_channels,
        "pooled_text": parts.uses_pooled_text,
        "family": parts.family or None,
        "components": {
            **{name: {"class": type(model).__name__, "parameters": count_parameters(model),
                      "max_tokens": parts.text_encoder.max_length}
               for name, model in zip(("text_encoder", "text_encoder_2"), text_models,
                                      strict=False)},
            "unet": {"class": type(parts.unet).__name__,
                     "parameters": count_parameters(parts.unet)},
            "vae": {"class": type(parts.vae).__name__, "parameters": count_parameters(parts.vae),
                    "scaling_factor": parts.latent_scale},
        },
        "schedule": {"num_train_timesteps": schedule.num_train_timesteps,
                     "prediction_type": schedule.prediction_type,
                     "alphas_cumprod_first": float(schedule.alphas_cumprod[0]),
                     "alphas_cumprod_last": float(schedule.alphas_cumprod[-1])},
        "student": parts.student_config or None,
        "prompt_suggestions": len(read_prompt_suggestions(parts.model_dir)),
    }


def recipe_summary(recipe) -> dict:
    """A recipe's fields, its conditioning images as their sizes (not their pixels)."""
    from engine.recipe import IMAGE_MODES

    summary = dict(vars(recipe))
    for name, mode in IMAGE_MODES.items():
        image = summary[name]
        summary[name] = None if image is None else f"{image.shape[1]}x{image.shape[0]} {mode}"
    return summary


def show_recipe(path, as_json: bool) -> int:
    from engine.api import EngineError
    from engine.recipe import read_recipe

    recipe = read_recipe(path)
    if recipe is None:
        raise EngineError(f"{path} has no DMD Studio recipe (it was not saved by DMD Studio "
                          "or generate).")
    print(json.dumps(recipe_summary(recipe), indent=1, ensure_ascii=False) if as_json
          else recipe.describe())
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("info", help="show a model's components, sizes and schedule")
    parser.add_argument("--model", help="model folder, single-file checkpoint or hub id "
                                        "(default: the embedded student)")
    parser.add_argument("--image", help="instead: the recipe saved in this PNG (what made it)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_model_option_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from engine.runtime.loading import load_pipeline
    from engine.runtime.torch_backend import pick_device

    if args.image:
        return show_recipe(args.image, args.json)
    device = pick_device(args.device)
    parts = load_pipeline(model_or_default(args.model), device=device, options=model_options(args))
    info = describe(parts, device)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"model         {info['model_dir']} ({info['kind']}, {info['image_size']} px)")
    for name, component in info["components"].items():
        print(f"{name:<14}{component['class']}, {component['parameters'] / 1e6:.2f}M parameters")
    latent = "x".join(str(v) for v in info["latent"])
    print(f"latent        {latent}, {info['conditioning_channels']} conditioning channels, "
          f"pooled text {info['pooled_text']}")
    schedule = info["schedule"]
    print(f"schedule      {schedule['num_train_timesteps']} steps, {schedule['prediction_type']}, "
          f"alphas_cumprod {schedule['alphas_cumprod_first']:.4f} .. "
          f"{schedule['alphas_cumprod_last']:.4f}")
    if info["student"]:
        print(f"student       timesteps {info['student'].get('timesteps')}, "
              f"method {info['student'].get('method')}")
    print(f"prompts       {info['prompt_suggestions']} suggestions (prompts.txt)")
    print(f"device        {device}")
    return 0
