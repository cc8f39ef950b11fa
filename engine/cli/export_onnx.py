"""`python -m engine export-onnx --model DIR [--out DIR] [--fp16|--int8]`: write ONNX graphs."""

from __future__ import annotations

import time
from pathlib import Path

from engine.api import EngineError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-onnx", help="Export text encoder, UNet and autoencoder to ONNX (+ manifest.json).")
    parser.add_argument("--model", required=True,
                        help="model folder (diffusers layout), embedded name or hub id")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: MODEL/onnx, MODEL/onnx-fp16 with --fp16 or "
                             "MODEL/onnx-int8 with --int8: the folders the backends look in)")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true",
                           help="float16 weights and inputs (for the CUDA / TensorRT providers)")
    precision.add_argument("--int8", action="store_true",
                           help="int8 matrix products in the text encoder and UNet (the "
                                "onnx-int8 backend: fastest on small CPUs)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    parser.add_argument("--check", action="store_true",
                        help="after export, compare every graph with PyTorch on CPU (fp32 only)")
    parser.set_defaults(run=run)


def run(args) -> int:
    from engine.runtime.loading import resolve_model_dir
    from engine.runtime.onnx_export import OPSET, cache_dir_for, export_model

    model_dir = resolve_model_dir(args.model)
    precision = "fp16" if args.fp16 else "int8" if args.int8 else "fp32"
    out = args.out or cache_dir_for(model_dir, precision)
    if args.check and precision != "fp32":
        raise EngineError(f"--check compares fp32 graphs on CPU; drop --{precision} or --check.")
    start = time.perf_counter()
    manifest = export_model(args.model, out, precision, opset=args.opset or OPSET)
    seconds = time.perf_counter() - start
    files = ", ".join(entry["file"] for entry in manifest["files"].values())
    print(f"exported {files} ({precision}, opset {manifest['opset']}) to {out} "
          f"in {seconds:.1f} s")
    if args.check:
        from engine.runtime.onnx_export import compare_export

        for part, difference in compare_export(model_dir, out).items():
            print(f"{part}: max abs difference {difference:.2e}")
    return 0
