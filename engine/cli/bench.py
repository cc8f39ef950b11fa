"""`python -m engine bench`: stage ms, keystroke latency, student vs teacher, peak memory."""

from __future__ import annotations

import json
import logging

from engine.api import BACKENDS, EngineError
from engine.cli.common import add_model_option_arguments, model_options
from engine.service import DIRECT_FRAME_MS

BACKEND_CHOICES = (*BACKENDS, "all")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="Measure the live path: per-stage ms, keystroke-to-frame latency, "
                      "student vs 50-step teacher, peak memory (see docs/benchmarks.md).")
    parser.add_argument("--model", default=None,
                        help="model folder or single-file checkpoint (default: the embedded "
                             "student in assets/models)")
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="all",
                        help="runtime to measure; all = each in its own process (default)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--repeats", type=int, default=10,
                        help="timed calls per median (default 10); teacher runs and typing "
                             "sessions: repeats // 2, between 1 and 3")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (torch.set_num_threads / onnxruntime)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--label", default="", help="free text stored with the results")
    parser.add_argument("--steps", type=int, choices=(1, 2, 4), default=None,
                        help="student steps of the typed frames (default: the count the "
                             "student was distilled for, as the live tab)")
    parser.add_argument("--preview-steps", type=int, choices=(0, 1, 2), default=None,
                        help="steps of the quick frame each typed multi-step frame shows first, "
                             "as the live tab's Preview (default 1 for multi-step frames; 0: "
                             "no preview)")
    parser.add_argument("--preview-above-ms", type=float, default=DIRECT_FRAME_MS,
                        help="show that preview only while the full frame is expected to take "
                             f"longer than this (default {DIRECT_FRAME_MS:g}, as the live tab's "
                             "Auto preview; 0: always)")
    parser.add_argument("--arch", default=None, choices=("sd15", "tiny-sd", "sdxl", "tiny-sdxl"),
                        help="instead of --model: random-weight one-step frames/s of SD-1.5 "
                             "shapes at 512 px or SDXL shapes at 1024 and 512 px (needs "
                             "CUDA; tiny-sd, tiny-sdxl: small stand-ins for tests)")
    parser.add_argument("--compile", default="default",
                        choices=("none", "default", "max-autotune"),
                        help="with --arch on CUDA: also replay the CUDA graphs over parts "
                             "compiled by torch.compile in this inductor mode (default: "
                             "default; max-autotune tunes kernels for minutes)")
    parser.add_argument("--interleave", action="store_true",
                        help="with --backend all: run the backends in one process, alternating "
                             "their calls for --repeats rounds, and report medians and ratios "
                             "(fair comparisons on a host whose speed drifts)")
    parser.add_argument("--control", default=None, metavar="MODEL|tiny|TYPE",
                        help="measure a control model's cost per frame on --model (PyTorch): a "
                             "ControlNet or T2I-Adapter folder, a ControlNet file, or tiny (a "
                             "random ControlNet shaped for the model's UNet); with --arch "
                             "sd15: scribble, lineart or canny adds the SD-1.5-shaped frame "
                             "with a random ControlNet")
    parser.add_argument("--control-type", default=None,
                        choices=("scribble", "lineart", "canny"),
                        help="with --control: the control image's preprocessing (default: the "
                             "control model's control.json, else its folder's or file's name)")
    parser.add_argument("--force", action="store_true",
                        help="with --arch sd15 or sdxl: run on CPU anyway (slow)")
    add_model_option_arguments(parser)
    parser.set_defaults(run=run)


def live_backends(choice: str, device: str) -> list[str]:
    """The backends `--backend choice` measures: all = each one, int8 only on a CPU."""
    if choice != "all":
        return [choice]
    from engine.runtime.torch_backend import pick_device

    on_cpu = pick_device(device) == "cpu"
    return [name for name in BACKENDS if on_cpu or name != "onnx-int8"]


def run(args) -> int:
    if args.repeats < 1:
        raise EngineError("--repeats must be at least 1.")
    if args.threads is not None and args.threads < 1:
        raise EngineError("--threads must be at least 1.")
    if args.preview_above_ms < 0:
        raise EngineError("--preview-above-ms must be 0 or more.")
    # with --arch each variant's figure is logged (stderr) as it is measured, JSON or not
    logging.basicConfig(level=logging.INFO if args.arch or not args.json else logging.WARNING,
                        format="%(message)s")
    if args.arch:
        if args.backend == "onnx-int8":
            raise EngineError("--arch measures GPU frames; onnx-int8 is a CPU backend.")
        backends = ["torch", "onnx"] if args.backend == "all" else [args.backend]
        from engine.bench.gpu import bench_arch
        from engine.bench.report import gpu_report

        if args.control not in (None, "scribble", "lineart", "canny"):
            raise EngineError("With --arch, --control is the control type to measure: "
                              "scribble, lineart or canny.")
        report = bench_arch(args.arch, args.device, args.repeats, args.force, args.compile,
                            tuple(backends), control=args.control)
        print(json.dumps(report) if args.json else gpu_report(report))
        return 0
    from engine.bench.report import live_report
    from engine.bench.runner import bench
    from engine.runtime.loading import default_model

    model = args.model or default_model()
    options = model_options(args)
    if model is None:
        raise EngineError("No embedded model is installed in assets/models yet; pass --model "
                          "DIR (a model folder).")
    if args.control:
        from engine.bench.control import bench_control, control_report

        if args.backend not in ("torch", "all"):
            raise EngineError("Control models run on PyTorch; use --backend torch with "
                              "--control.")
        report = bench_control(str(model), args.control, args.device, args.repeats,
                               args.threads, args.control_type)
        print(json.dumps(report) if args.json else control_report(report))
        return 0
    if args.interleave:
        from engine.bench.interleave import interleaved_bench, interleaved_report

        if args.backend != "all":
            raise EngineError("--interleave compares backends; use it with --backend all.")
        report = interleaved_bench(str(model), live_backends("all", args.device), args.device,
                                   args.repeats, args.threads, options)
        print(json.dumps(report) if args.json else interleaved_report(report))
        return 0
    report = bench(str(model), live_backends(args.backend, args.device), args.device,
                   args.repeats, args.threads, args.label, args.steps, args.preview_steps,
                   args.preview_above_ms, options)
    print(json.dumps(report) if args.json else live_report(report))
    return 0
