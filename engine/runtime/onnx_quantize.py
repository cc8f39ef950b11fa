"""int8 ONNX graphs for small CPUs: dynamic quantization of the text encoder's and UNet's
matrix products (weights int8 per output channel, activations quantized per call).

Convolutions and the autoencoder stay fp32. Measured on the embedded model (2-core AMD EPYC,
docs/benchmarks.md): text encoder 6.7 -> 2.1 ms, UNet 9.4 -> 8.1 ms a step, with the domain
evaluator's fd and alignment unchanged within seed noise at 1, 2 and 4 steps and for the
teacher. Statically quantized convolutions were faster still (UNet 6.9 ms) but raised the
one-step fd from 0.24 to 0.27-0.29: at t = 999 an error in the predicted noise reaches the
image 1 / sqrt(alpha_bar) = 14.6 times larger, so they are left out.
"""

from __future__ import annotations

import logging
from pathlib import Path

from engine.api import EngineError

QUANTIZED_PARTS = ("text_encoder", "unet")
QUANTIZED_OPS = ["MatMul", "Gemm"]
# A protobuf file holds at most 2 GiB: bigger graphs (an SD-1.5 UNet keeps ~1.5 GB of fp32
# convolutions) store their weights in a side file, "<graph>.onnx.data".
EXTERNAL_DATA_ABOVE_BYTES = 1 << 30


def external_data_files(path: Path) -> list[Path]:
    """The side files that hold a graph's weights (none for a graph stored in one file)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    names = {entry.value for tensor in model.graph.initializer
             for entry in tensor.external_data if entry.key == "location"}
    return [path.parent / name for name in sorted(names)]


def quantize_dynamic_int8(source: Path, target: Path) -> None:
    """Write `source` with int8 MatMul/Gemm weights (per channel) to `target` (and, for a big
    graph, its weights to `target`.data)."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as error:
        raise EngineError("int8 export needs onnxruntime's quantization tools (pip install "
                          "onnxruntime onnx).") from error
    size = sum(file.stat().st_size for file in [source, *external_data_files(source)])
    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it suggests a pre-processing pass the graphs do not need
    try:
        # reduce_range off: 7-bit weights doubled the text encoder's error here (VNNI CPU).
        quantize_dynamic(source, target, op_types_to_quantize=QUANTIZED_OPS, per_channel=True,
                         reduce_range=False, weight_type=QuantType.QInt8,
                         use_external_data_format=size > EXTERNAL_DATA_ABOVE_BYTES)
    finally:
        quiet.setLevel(level)


def quantize_export(folder: Path, manifest: dict) -> dict:
    """Quantize the graphs of an fp32 export folder in place; returns the int8 manifest."""
    if manifest.get("dtype") != "float32":
        raise EngineError("int8 graphs are made from an fp32 export, not a float16 one.")
    for part in QUANTIZED_PARTS:
        path = folder / manifest["files"][part]["file"]
        staging = folder / f".{part}-int8"
        staging.mkdir()
        quantize_dynamic_int8(path, staging / path.name)
        for old in [path, *external_data_files(path)]:
            old.unlink()
        for new in staging.iterdir():  # the graph, and its .data file if it has one
            new.replace(folder / new.name)
        staging.rmdir()
    return {**manifest, "precision": "int8",
            "quantization": {"parts": list(QUANTIZED_PARTS), "ops": QUANTIZED_OPS,
                             "weights": "int8 per channel", "activations": "uint8 per call"}}
