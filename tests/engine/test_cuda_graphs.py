"""CUDA graph replay of the torch backend's stages. On a CPU the capture is stood in for by
one that keeps graph semantics (static inputs and outputs, rewritten in place on replay)."""

import logging

import pytest
import torch

from engine.runtime.cuda_graphs import MAX_GRAPHS, GraphedCall, graphs_wanted


def replaying_capture(function, static_inputs, pool):
    """Like a CUDA graph: outputs allocated once, replay() recomputes them from the static
    inputs' current values in place."""
    outputs = function(*static_inputs)

    def replay():
        fresh = function(*static_inputs)
        for output, value in zip(as_tuple(outputs), as_tuple(fresh), strict=True):
            output.copy_(value)

    return replay, outputs


def as_tuple(outputs):
    return (outputs,) if isinstance(outputs, torch.Tensor) else outputs


class Counting:
    """A capture that counts its calls; wrong=True returns outputs a graph would not."""

    def __init__(self, wrong=False, fail=False):
        self.calls, self.wrong, self.fail = 0, wrong, fail

    def __call__(self, function, static_inputs, pool):
        self.calls += 1
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        replay, outputs = replaying_capture(function, static_inputs, pool)
        if self.wrong:
            outputs.mul_(2).add_(1)
            return (lambda: None), outputs
        return replay, outputs


def affine(x, y):
    return x * 3 + y


def test_replays_give_the_function_result_and_results_do_not_alias():
    capture = Counting()
    call = GraphedCall(affine, "affine", capture=capture)
    x, y = torch.randn(2, 3), torch.randn(2, 3)
    first = call(x, y)
    second = call(x + 1, y)
    assert torch.equal(first, affine(x, y))
    assert torch.equal(second, affine(x + 1, y))  # the new inputs were copied in
    assert torch.equal(first, affine(x, y))  # the first result is a copy, not the static output
    assert capture.calls == 1


def test_tuple_outputs_and_one_graph_per_signature():
    capture = Counting()
    call = GraphedCall(lambda x: (x + 1, x.sum(0)), "pair", capture=capture)
    small, big = torch.randn(1, 4), torch.randn(3, 4)
    for _ in range(2):
        plus, total = call(small)
        assert torch.equal(plus, small + 1) and torch.equal(total, small.sum(0))
        plus, total = call(big)
        assert torch.equal(plus, big + 1) and torch.equal(total, big.sum(0))
    call(small.double())  # a new dtype is a new signature
    assert capture.calls == 3


def test_the_least_recently_used_graph_goes_first():
    capture = Counting()
    call = GraphedCall(lambda x: x * 2, "double", capture=capture)
    shapes = [(n, 2) for n in range(1, MAX_GRAPHS + 1)]
    for shape in shapes:
        call(torch.ones(shape))
    call(torch.ones(shapes[0]))  # used again: now the newest
    call(torch.ones(MAX_GRAPHS + 1, 2))  # one too many: drops shapes[1]
    assert len(call.graphs) == MAX_GRAPHS
    kept = {key[0][0] for key in call.graphs}
    assert shapes[0] in kept and shapes[1] not in kept
    assert capture.calls == MAX_GRAPHS + 1


@pytest.mark.parametrize("capture", [Counting(fail=True), Counting(wrong=True)],
                         ids=["capture fails", "graph disagrees"])
def test_a_failed_or_wrong_graph_turns_the_call_eager_for_good(capture, caplog):
    call = GraphedCall(affine, "affine", capture=capture)
    x, y = torch.randn(2, 2), torch.randn(2, 2)
    with caplog.at_level(logging.WARNING, "engine.runtime.cuda_graphs"):
        assert torch.equal(call(x, y), affine(x, y))
    assert "CUDA graphs off for affine" in caplog.text
    assert not call.enabled and not call.graphs
    assert torch.equal(call(x - 1, y), affine(x - 1, y))
    assert torch.equal(call(torch.ones(5), torch.ones(5)), affine(torch.ones(5), torch.ones(5)))
    assert capture.calls == 1  # never tried again


def test_graphs_are_wanted_on_cuda_unless_switched_off(monkeypatch):
    monkeypatch.delenv("DMD_STUDIO_CUDA_GRAPHS", raising=False)
    assert graphs_wanted("cuda") and graphs_wanted("cuda:1") and not graphs_wanted("cpu")
    monkeypatch.setenv("DMD_STUDIO_CUDA_GRAPHS", "0")
    assert not graphs_wanted("cuda")


def test_the_backend_draws_the_same_frames_through_graphed_stages(tiny_student_dir):
    """Every staged call of the torch backend (CLIP text, UNet with its inputs, decoder)
    through GraphedCall: the generator's images match the plain backend's exactly."""
    import numpy as np

    from engine.api import GenerateRequest
    from engine.pipeline.generator import Generator
    from engine.runtime.torch_backend import TorchBackend

    plain = TorchBackend.load(str(tiny_student_dir), "cpu")
    assert not plain.cuda_graphs and plain._clip_text_call is None  # a CPU stays eager
    staged = TorchBackend(plain.parts, "cpu")
    captures = Counting()
    staged._unet_call = GraphedCall(staged._unet_call, "unet", capture=captures)
    staged._decode_call = GraphedCall(staged._decode_call, "decoder", capture=captures)
    staged._clip_text_call = GraphedCall(staged.parts.text_encoder.encode_ids, "text",
                                         capture=captures)
    for prompt, seed in (("red apple", 1), ("blue car", 2), ("red apple", 3)):
        request = GenerateRequest(prompt, seed=seed, steps=1)
        expected, _ = Generator(plain).generate(request)
        assert np.array_equal(Generator(staged).generate(request)[0], expected)
    assert captures.calls == 3  # one graph per stage, reused for every later frame
    assert staged.graphed_stages() == ["text", "unet", "decoder"] and not plain.graphed_stages()


def test_a_dropped_backend_frees_its_weights_at_once(tiny_student_dir):
    """No reference cycle: a swapped-out model leaves memory without waiting for gc."""
    import gc
    import weakref

    from engine.runtime.torch_backend import TorchBackend

    gc.disable()
    try:
        backend = TorchBackend.load(str(tiny_student_dir), "cpu")
        unet = weakref.ref(backend.parts.unet)
        del backend
        assert unet() is None
    finally:
        gc.enable()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_real_cuda_graphs_match_the_eager_backend(tiny_student_dir):
    import numpy as np

    from engine.api import GenerateRequest
    from engine.pipeline.generator import Generator
    from engine.runtime.torch_backend import TorchBackend

    eager = TorchBackend.load(str(tiny_student_dir), "cuda", cuda_graphs=False)
    graphed = TorchBackend(eager.parts, "cuda")
    for prompt in ("red apple", "blue car"):
        request = GenerateRequest(prompt, seed=5, steps=1)
        a = Generator(eager).generate(request)[0].astype(np.int16)
        b = Generator(graphed).generate(request)[0].astype(np.int16)
        assert np.abs(a - b).max() <= 2
    for call in (graphed._unet_call, graphed._decode_call, graphed._clip_text_call):
        assert call.enabled and len(call.graphs) == 1, call.name
