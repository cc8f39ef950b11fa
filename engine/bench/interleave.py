"""Backends side by side in one process, their calls alternating round by round.

Separate runs a minute apart can differ by 25% on a shared host whose speed drifts (the same
fp32 UNet call has read 9.7 and 12.6 ms minutes apart in one process). Alternating the backends
call by call exposes them to the same drift, so their ratios hold where absolute figures
do not.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from engine.api import GenerateRequest
from engine.bench.keystroke import PROMPT
from engine.bench.timing import machine_info

CASES = ("text_ms", "unet_ms", "frame_1step_ms", "frame_2step_ms")


def backend_cases(runtime) -> dict[str, Callable[[int], object]]:
    """The timed calls of one backend; each takes the round number (a fresh prompt each)."""
    from engine.pipeline.generator import Generator

    generator = Generator(runtime)
    shape = (1, runtime.latent_channels, runtime.latent_size, runtime.latent_size)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    text = runtime.encode_text([PROMPT])
    t = torch.tensor([999])

    def frame(steps: int) -> Callable[[int], object]:
        def run(round_number: int) -> object:
            generator.clear_caches()
            return generator.generate(GenerateRequest(f"{PROMPT} {round_number}", steps=steps))
        return run

    def synchronized(call: Callable[[], object]) -> object:
        result = call()
        runtime.synchronize()
        return result

    return {
        "text_ms": lambda n: synchronized(lambda: runtime.encode_text([f"{PROMPT} {n}"])),
        "unet_ms": lambda n: synchronized(lambda: runtime.unet(latents, t, text, None)),
        "frame_1step_ms": frame(1),
        "frame_2step_ms": frame(2),
    }


def interleaved_bench(model: str, backends: list[str], device: str = "auto", rounds: int = 40,
                      threads: int | None = None, options=None) -> dict:
    """Median ms per case and backend over `rounds` alternating rounds, and each backend's
    ratio to the first one (below 1: faster); options: engine.api.ModelOptions or None."""
    from engine.bench.runner import load_backend

    cases, torch_threads = {}, {}
    for name in backends:
        runtime, _ = load_backend(model, name, device, threads, options)
        runtime.warm_up()
        cases[name] = backend_cases(runtime)
        # each backend sets torch's threads as it loads (onnx: one, for its glue); keep that
        # setting for its own calls, whatever loaded after it
        torch_threads[name] = torch.get_num_threads()
        for call in cases[name].values():
            call(-1)  # warm every path once
    samples = {name: {case: [] for case in CASES} for name in backends}
    for round_number in range(max(1, rounds)):
        shift = round_number % len(backends)
        for name in backends[shift:] + backends[:shift]:  # nobody always goes first
            torch.set_num_threads(torch_threads[name])
            for case, call in cases[name].items():
                start = time.perf_counter()
                call(round_number)
                samples[name][case].append((time.perf_counter() - start) * 1e3)
    medians = {name: {case: statistics.median(values) for case, values in by_case.items()}
               for name, by_case in samples.items()}
    first = medians[backends[0]]
    return {"mode": "interleaved", "model": model, "device": device, "rounds": rounds,
            "backends": backends, "torch_threads": torch_threads, "ms": medians,
            "ratio_to_first": {name: {case: value / first[case] for case, value in ms.items()}
                               for name, ms in medians.items()},
            "machine": machine_info(), "date": time.strftime("%Y-%m-%d")}


def interleaved_report(report: dict) -> str:
    """The interleaved medians as a plain-text table."""
    first = report["backends"][0]
    lines = [f"{report['rounds']} alternating rounds, {report['machine'].get('cpu', '')}; "
             f"ratio to {first} in brackets",
             f"{'backend':<12}" + "".join(f"{case:>22}" for case in CASES)]
    for name in report["backends"]:
        ms, ratio = report["ms"][name], report["ratio_to_first"][name]
        cells = "".join(f"{ms[case]:>14.2f} ({ratio[case]:.2f})" for case in CASES)
        lines.append(f"{name:<12}{cells}")
    return "\n".join(lines)
