"""Replay the torch backend's fixed-shape GPU calls from CUDA graphs.

At batch 1 a one-step frame is bound by kernel launches, not arithmetic: on an H100 the
SD-1.5-shaped frame took 40 ms eager and 9-10 ms replayed from one graph (docs/benchmarks.md).
Each wrapped call keeps one graph per input signature (shapes and dtypes), captured on its
first use; a capture that fails or whose first result differs from the eager call's turns
the wrapper off for good, so a model the graphs do not suit still draws, eagerly.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

# Graphs kept per wrapped call: the live path uses one or two shapes; eval's batches add some.
MAX_GRAPHS = 4
# A graph's first result may differ from the eager call's by fp16 rounding, never by more than
# this fraction of the eager result's largest magnitude (at least 1).
PARITY_TOLERANCE = 1e-2
DISABLE_VARIABLE = "DMD_STUDIO_CUDA_GRAPHS"  # "0": the torch backend stays eager on CUDA

Outputs = torch.Tensor | tuple[torch.Tensor, ...]
# capture(function, static inputs, memory pool) -> (replay, static outputs); replay() rewrites
# the static outputs from the static inputs' current values.
Capture = Callable[[Callable[..., Outputs], tuple[torch.Tensor, ...], object],
                   tuple[Callable[[], None], Outputs]]


def graphs_wanted(device: str) -> bool:
    """CUDA graphs for a CUDA device unless DMD_STUDIO_CUDA_GRAPHS=0."""
    return device.startswith("cuda") and os.environ.get(DISABLE_VARIABLE, "1") != "0"


def capture_cuda_graph(function, static_inputs, pool):
    """Two warm-up calls on a side stream (cuDNN picks its kernels there), then one capture.
    A capture that fails leaves torch's capture stream current: the caller's is restored."""
    device = torch.cuda.device(static_inputs[0].device) if static_inputs else \
        contextlib.nullcontext()
    with device:
        caller_stream = torch.cuda.current_stream()
        try:
            side = torch.cuda.Stream()
            side.wait_stream(caller_stream)
            with torch.cuda.stream(side):
                for _ in range(2):
                    function(*static_inputs)
            caller_stream.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                outputs = function(*static_inputs)
        finally:
            torch.cuda.set_stream(caller_stream)
    return graph.replay, outputs


def new_memory_pool():
    """One pool for all of a backend's graphs: they replay one at a time on one thread, and
    each result is copied out before the next replay."""
    return torch.cuda.graph_pool_handle()


@dataclass
class Captured:
    inputs: tuple[torch.Tensor, ...]
    replay: Callable[[], None]
    outputs: Outputs


class GraphedCall:
    """function(*tensors) -> a tensor or a tuple of tensors, replayed from CUDA graphs."""

    def __init__(self, function: Callable[..., Outputs], name: str, pool=None,
                 capture: Capture = capture_cuda_graph):
        self.function = function
        self.name = name
        self.pool = pool
        self.capture = capture
        self.graphs: OrderedDict[tuple, Captured] = OrderedDict()
        self.enabled = True

    def __call__(self, *inputs: torch.Tensor) -> Outputs:
        if not self.enabled:
            return self.function(*inputs)
        key = tuple((tuple(tensor.shape), tensor.dtype) for tensor in inputs)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self._capture(key, inputs)
            if entry is None:
                return self.function(*inputs)
        self.graphs.move_to_end(key)
        for static, tensor in zip(entry.inputs, inputs, strict=True):
            static.copy_(tensor)
        entry.replay()
        return copied(entry.outputs)

    def _capture(self, key: tuple, inputs: tuple[torch.Tensor, ...]) -> Captured | None:
        statics = tuple(tensor.clone() for tensor in inputs)
        try:
            expected = copied(self.function(*statics))
            replay, outputs = self.capture(self.function, statics, self.pool)
            replay()
            gap, scale = largest_gap(outputs, expected)
        except Exception as error:  # noqa: BLE001 - any failure means: stay eager
            return self._give_up(f"capturing failed ({type(error).__name__}: {error})")
        if not gap <= PARITY_TOLERANCE * max(1.0, scale):  # NaN fails too
            return self._give_up(f"the graph's result differs from the eager one by {gap:.3g}")
        if len(self.graphs) >= MAX_GRAPHS:
            self.graphs.popitem(last=False)
        self.graphs[key] = entry = Captured(statics, replay, outputs)
        log.info("CUDA graph captured for %s at %s", self.name,
                 ", ".join("x".join(map(str, shape)) for shape, _ in key))
        return entry

    def _give_up(self, reason: str) -> None:
        log.warning("CUDA graphs off for %s: %s; it runs eagerly (if frames then misbehave, "
                    "restart with %s=0).", self.name, reason, DISABLE_VARIABLE)
        self.enabled = False
        self.graphs.clear()
        return None


def copied(outputs: Outputs) -> Outputs:
    """Fresh tensors holding the outputs (a graph's static outputs change on every replay)."""
    if isinstance(outputs, torch.Tensor):
        return outputs.clone()
    return tuple(output.clone() for output in outputs)


def largest_gap(outputs: Outputs, expected: Outputs) -> tuple[float, float]:
    """(largest absolute difference, largest absolute expected value) over all outputs."""
    if isinstance(outputs, torch.Tensor):
        outputs, expected = (outputs,), (expected,)
    gap = max(float((a.float() - b.float()).abs().max()) for a, b in
              zip(outputs, expected, strict=True))
    scale = max(float(b.float().abs().max()) for b in expected)
    return gap, scale
