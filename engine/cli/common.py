"""Arguments and loading shared by the CLI commands."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from engine.api import (
    BACKENDS,
    EngineError,
    LoraChoice,
    ModelOptions,
    os_error_message,
    parse_timesteps,
)
from engine.runtime.loading import default_model

BACKGROUND_NICENESS = 19  # the lowest: the trainer yields to anything interactive


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model folder, single-file checkpoint (.safetensors, "
                                        ".ckpt: SD 1.x, SD 2.x, SDXL), 'embedded-teacher' or a "
                                        "hub id (default: the shipped embedded student)")
    parser.add_argument("--backend", choices=BACKENDS, default="torch",
                        help="runtime (default torch; onnx-int8: CPU graphs with int8 matrix "
                             "products, the fastest on small CPUs)")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA, then Apple's MPS, then the CPU), cpu, cuda[:N], mps; "
                             "with onnx also tensorrt, directml, coreml, openvino "
                             "(default auto)")
    add_model_option_arguments(parser)


def add_model_option_arguments(parser: argparse.ArgumentParser) -> None:
    """--unet, --student-timesteps, --size and --prediction (engine.api.ModelOptions)."""
    parser.add_argument("--unet", metavar="FILE",
                        help="a UNet-only file (.safetensors, .bin, .ckpt; diffusers or original "
                             "keys) or unet/ folder that replaces the model's UNet, such as "
                             "DMD2's SDXL students")
    parser.add_argument("--student-timesteps", metavar="T[,T...]",
                        help="the timesteps the student was distilled for: 399 for DMD2's "
                             "one-step SDXL, 999,749,499,249 for its four-step one (default: "
                             "student.json beside --unet or in the model folder)")
    parser.add_argument("--size", type=int, metavar="PIXELS",
                        help="image size (default: the model's own; a single file: SD 1.x 512, "
                             "SD 2.x 768, SDXL 1024; SD-Turbo and SDXL-Turbo want 512)")
    parser.add_argument("--prediction", choices=("epsilon", "v_prediction"),
                        help="what the UNet predicts, for a single file whose family default is "
                             "wrong (SD 2.x files default to v_prediction, SD 2 base and "
                             "SD-Turbo are epsilon)")


def model_options(args: argparse.Namespace) -> ModelOptions | None:
    """The ModelOptions of the parsed --unet/--student-timesteps/--size/--prediction flags;
    None when none was given."""
    given = {name: getattr(args, name, None) for name in
             ("unet", "student_timesteps", "size", "prediction")}  # absent: not given
    if given["student_timesteps"]:
        given["student_timesteps"] = tuple(parse_timesteps(given["student_timesteps"],
                                                           "--student-timesteps"))
    size = given["size"]
    if size is not None and (size < 8 or size % 8):
        raise EngineError(f"--size {size} must be a positive multiple of 8 (pixels).")
    options = ModelOptions(**given)
    return options if options.changes_model else None


def add_adapter_arguments(parser: argparse.ArgumentParser) -> None:
    """--lora FILE[:WEIGHT] (repeatable) and --decoder DIR: what changes how a model draws."""
    parser.add_argument("--lora", action="append", default=None, metavar="FILE[:WEIGHT]",
                        help="fuse a LoRA .safetensors file (diffusers, PEFT or kohya naming) "
                             "at WEIGHT (default 1); repeat for several; runs on PyTorch")
    parser.add_argument("--decoder", metavar="DIR",
                        help="decode with this fast autoencoder folder (TAESD / TAESDXL, an "
                             "AutoencoderTiny) instead of the model's VAE; runs on PyTorch")


def parse_lora(text: str) -> LoraChoice:
    """"style.safetensors:0.8" -> LoraChoice("style.safetensors", 0.8); no weight: 1."""
    path, _, weight = text.rpartition(":")
    if path and weight:
        try:
            value = float(weight)
        except ValueError:
            return LoraChoice(text, 1.0)  # a colon inside the path (C:\...)
        if not abs(value) < 1e3:
            raise EngineError(f"--lora {text!r}: the weight must be a number below 1000.")
        return LoraChoice(path, value)
    return LoraChoice(text, 1.0)


def check_writable_folder(folder: Path, flag: str) -> None:
    """Create folder (and its parents) and write a probe file there, so that a read-only or
    full location fails at once with one sentence instead of after minutes of work."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        message = os_error_message(error, folder, "write")
        raise EngineError(f"{flag}: {message}") from error


def model_or_default(model: str | None) -> str:
    model = model or default_model()
    if model is None:
        raise EngineError("No --model given and no embedded model is installed in assets/models.")
    return model


def load_cli_generator(args: argparse.Namespace, loras: tuple[LoraChoice, ...] = (),
                       decoder: str | None = None):
    """The Generator the flags ask for; with --control, its control model on PyTorch; with
    LoRAs or a fast decoder, on PyTorch too (a notice says when that replaces onnx)."""
    import sys

    from engine.pipeline.generator import Generator
    from engine.runtime import create_backend

    control_path = getattr(args, "control", None)
    backend = create_backend(model_or_default(args.model), args.backend, args.device,
                             control=control_path is not None, loras=loras, decoder=decoder,
                             options=model_options(args))
    if getattr(backend, "notice", ""):
        print(backend.notice, file=sys.stderr)
    if control_path is None:
        return Generator(backend)
    from engine.runtime.control import load_control

    return Generator(backend, control=load_control(control_path, backend,
                                                   getattr(args, "control_type", None)))


def lower_cpu_priority() -> bool:
    """Run this process (and the threads it starts later) below normal CPU priority, so that
    interactive work on the same cores comes first; False where the OS offers no way."""
    if hasattr(os, "nice"):
        os.nice(BACKGROUND_NICENESS)
        return True
    try:
        import psutil

        psutil.Process().nice(psutil.IDLE_PRIORITY_CLASS)  # Windows
        return True
    except (ImportError, AttributeError, OSError):
        return False
