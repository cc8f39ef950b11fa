"""ONNX export parity, the onnx backend against torch, and the live service over both."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.api import GenerateRequest
from engine.runtime.onnx_export import (
    MANIFEST,
    cache_dir_for,
    compare_export,
    export_model,
    read_manifest,
    resolve_export,
)

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def student_copy(tmp_path_factory, tiny_student_dir):
    """A private copy of the tiny student: the backend writes its onnx/ cache into it."""
    return shutil.copytree(tiny_student_dir, tmp_path_factory.mktemp("onnx") / "student")


@pytest.fixture(scope="module")
def sketch_copy(tmp_path_factory, tiny_sketch_model_dir):
    return shutil.copytree(tiny_sketch_model_dir, tmp_path_factory.mktemp("onnx") / "sketch")


@pytest.fixture(scope="module")
def backends(student_copy):
    from engine.runtime import create_backend

    return {name: create_backend(str(student_copy), name, "cpu")
            for name in ("torch", "onnx", "onnx-int8")}


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_sketch_model_dir"])
def test_export_parity_per_graph(fixture, request, tmp_path):
    model = request.getfixturevalue(fixture)
    manifest = export_model(model, tmp_path / "export")
    assert manifest["opset"] >= 17 and manifest["dtype"] == "float32"
    assert set(manifest["files"]) == {"text_encoder", "unet", "vae_encoder", "vae_decoder"}
    assert manifest["pooled_text"] == (fixture == "tiny_sketch_model_dir")
    unet_inputs = manifest["files"]["unet"]["inputs"]
    assert ("class_labels" in unet_inputs) == manifest["pooled_text"]
    assert unet_inputs["sample"][1] == (8 if manifest["pooled_text"] else 4)
    differences = compare_export(model, tmp_path / "export", batch=2)
    assert max(differences.values()) <= 1e-3, differences


def test_export_refuses_foreign_folder_and_fp16_marks_manifest(tiny_model_dir, tmp_path):
    from engine.__main__ import main

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    assert main(["export-onnx", "--model", str(tiny_model_dir), "--out", str(foreign)]) == 2
    assert (foreign / "keep.txt").is_file()
    out = tmp_path / "fp16"
    assert main(["export-onnx", "--model", str(tiny_model_dir), "--out", str(out),
                 "--fp16"]) == 0
    manifest = read_manifest(out)
    assert manifest["dtype"] == "float16" and (out / "unet.onnx").is_file()


def test_backend_exports_on_first_use_then_reuses(student_copy, backends, user_folders):
    folder, manifest = resolve_export(student_copy)
    assert folder == cache_dir_for(student_copy) and manifest["dtype"] == "float32"
    assert folder.parent == user_folders["cache"] / "onnx"  # never into the model folder
    assert not list(student_copy.glob("*onnx*"))
    assert backends["onnx"].device == "CPUExecutionProvider"
    assert backends["onnx"].student_config["timesteps"] == [999]
    from engine.runtime.onnx_backend import OnnxBackend

    direct = OnnxBackend.load(str(folder), "cpu")  # an export folder works as well
    assert direct.model_dir.resolve() == student_copy.resolve()


def test_stale_export_is_detected(student_copy, backends):
    weights = next((student_copy / "unet").glob("*.safetensors"))
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert resolve_export(student_copy)[1] is None  # weights changed: export again
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert resolve_export(student_copy)[1]["dtype"] == "float32"


def test_an_export_in_the_model_folder_is_read_while_current(student_copy, backends):
    cached, _ = resolve_export(student_copy)
    earlier = shutil.copytree(cached, student_copy / "onnx")  # where earlier versions exported
    try:
        folder, manifest = resolve_export(student_copy)
        assert folder == earlier and manifest is not None
        weights = next((student_copy / "unet").glob("*.safetensors"))
        stat = weights.stat()
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        try:  # stale there: the user cache is where the next export goes
            assert resolve_export(student_copy) == (cached, None)
        finally:
            os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    finally:
        shutil.rmtree(earlier)


def test_text_unet_decode_match_torch(backends):
    torch_backend, onnx_backend = backends["torch"], backends["onnx"]
    prompts = ["a red apple", "rocket"]
    text_t, text_o = torch_backend.encode_text(prompts), onnx_backend.encode_text(prompts)
    assert torch.allclose(text_t.token_states, text_o.token_states, atol=1e-4)
    assert torch.allclose(text_t.pooled, text_o.pooled, atol=1e-4)
    x = torch.randn(2, 4, 4, 4)
    t = torch.tensor([999, 500])
    assert torch.allclose(torch_backend.unet(x, t, text_t, None),
                          onnx_backend.unet(x, t, text_o, None), atol=1e-4)
    assert torch.allclose(torch_backend.decode(x), onnx_backend.decode(x), atol=1e-4)


def test_generate_images_match_torch(backends):
    from engine.bench.stages import TeacherView
    from engine.pipeline.generator import Generator

    images = {}
    for name, backend in backends.items():
        generator = Generator(backend)
        images[name] = [generator.generate(GenerateRequest("rocket", seed=3, steps=steps))[0]
                        for steps in (1, 4)]
        images[name].append(Generator(TeacherView(backend)).generate(GenerateRequest(
            "rocket", seed=3, teacher_steps=4, guidance=3.0))[0])
    for a, b in zip(images["torch"], images["onnx"], strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


def test_sketch_model_generate_matches_torch(sketch_copy):
    from engine.pipeline.generator import Generator
    from engine.runtime import create_backend

    sketch = np.full((32, 32, 3), 255, np.uint8)
    sketch[8:24, 15:17] = 0
    request = GenerateRequest("cat face", seed=1, sketch=sketch)
    images = [Generator(create_backend(str(sketch_copy), name, "cpu")).generate(request)[0]
              for name in ("torch", "onnx")]
    assert np.abs(images[0].astype(int) - images[1].astype(int)).max() <= 2


# -- the live service over both backends --------------------------------------------------
@pytest.fixture(params=["torch", "onnx", "onnx-int8"])
def generator(request, backends):
    from engine.pipeline.generator import Generator

    return Generator(backends[request.param])


class Gate:
    """Wraps a generator so the test decides when the first request may finish."""

    def __init__(self, generator):
        self.generator, self.backend = generator, generator.backend
        self.started, self.release = threading.Event(), threading.Event()

    def generate(self, request):
        self.started.set()
        self.release.wait(10)
        return self.generator.generate(request)


def collect(generator):
    from engine.service import GenerationService

    results, arrived = [], threading.Event()

    def on_result(result):
        results.append(result)
        arrived.set()

    return GenerationService(generator, on_result), results, arrived


def test_service_latest_wins(generator, no_thread_leak):
    gate = Gate(generator)
    service, results, arrived = collect(gate)
    try:
        first = service.submit(GenerateRequest("a"))
        assert gate.started.wait(10)
        for prompt in ("ab", "abc", "abcd"):
            last = service.submit(GenerateRequest(prompt))
        gate.release.set()
        assert arrived.wait(10)
        deadline = threading.Event()
        while not any(r.request_id == last for r in results) and not deadline.wait(0.01):
            pass
    finally:
        service.close()
    # the running frame is shown, the overtaken ones never run, the newest one follows
    assert [r.request_id for r in results] == [first, last]
    assert all(r.ok and r.image.shape == (32, 32, 3) for r in results)
    assert results[0].backend == generator.backend.name


def test_service_previews_then_refines_on_each_backend(generator, no_thread_leak):
    service, results, arrived = collect(generator)
    try:
        request_id = service.submit(GenerateRequest("red apple", steps=4, preview_steps=1))
        deadline = threading.Event()
        while len(results) < 2 and not deadline.wait(0.01):
            pass
    finally:
        service.close()
    assert [(r.request_id, r.preview) for r in results] == [(request_id, True),
                                                             (request_id, False)]
    one_step, _ = generator.generate(GenerateRequest("red apple", steps=1))
    four_steps, _ = generator.generate(GenerateRequest("red apple", steps=4))
    np.testing.assert_array_equal(results[0].image, one_step)
    np.testing.assert_array_equal(results[1].image, four_steps)


def test_service_failed_result_then_recovers(generator, no_thread_leak):
    service, results, arrived = collect(generator)
    try:
        service.submit(GenerateRequest("bad", strength=2.0))
        assert arrived.wait(10)
        arrived.clear()
        service.submit(GenerateRequest("good"))
        assert arrived.wait(10)
    finally:
        service.close()
    assert results[0].error and not results[0].ok
    assert results[1].ok and service.is_alive() is False


def test_service_close_joins_while_running(generator, no_thread_leak):
    gate = Gate(generator)
    service, results, _ = collect(gate)
    service.submit(GenerateRequest("x"))
    assert gate.started.wait(10)
    threading.Timer(0.05, gate.release.set).start()
    service.close(timeout=10)
    assert not service.is_alive() and results == []
    assert MANIFEST == "manifest.json"


def test_a_torch_backend_after_an_onnx_one_gets_its_threads_back(student_copy, backends):
    from engine.runtime import create_backend

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        create_backend(str(student_copy), "onnx", "cpu")
        assert torch.get_num_threads() == 1  # the onnx generator's glue runs on one thread
        create_backend(str(student_copy), "torch", "cpu")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_auto_backend_is_onnx_on_a_cpu_for_small_models_only(student_copy, monkeypatch,
                                                             tmp_path):
    import engine.runtime as runtime

    assert runtime.choose_backend(str(student_copy), "cpu") == "onnx"
    export = str(cache_dir_for(student_copy))
    assert runtime.choose_backend(export, "cpu") == "onnx"  # an export folder
    (tmp_path / "empty").mkdir()
    assert runtime.choose_backend(str(tmp_path / "empty"), "cpu") == "torch"  # torch explains
    monkeypatch.setattr(runtime, "AUTO_ONNX_MAX_UNET_BYTES", 1)
    assert runtime.choose_backend(str(student_copy), "cpu") == "torch"
    assert runtime.create_backend(str(student_copy), "auto", "cpu").name == "torch"


def test_spinning_is_on_unless_the_environment_turns_it_off(monkeypatch):
    from engine.api import EngineError
    from engine.runtime.onnx_backend import SPIN_ENV, spinning_allowed

    monkeypatch.delenv(SPIN_ENV, raising=False)
    assert spinning_allowed()
    monkeypatch.setenv(SPIN_ENV, "0")
    assert not spinning_allowed()
    monkeypatch.setenv(SPIN_ENV, "yes")
    with pytest.raises(EngineError, match="DMD_ORT_SPIN must be 0 or 1"):
        spinning_allowed()


def test_cuda_n_picks_that_gpu_for_the_gpu_providers():
    from types import SimpleNamespace

    from engine.api import EngineError
    from engine.runtime.onnx_backend import OnnxBackend, gpu_index

    assert (gpu_index("cuda"), gpu_index("cuda:1"), gpu_index("tensorrt:3")) == (0, 1, 3)
    with pytest.raises(EngineError, match="cuda:N"):
        gpu_index("cuda:first")
    backend = SimpleNamespace(gpu=1, np_dtype=np.float16, folder=Path("export"))
    assert OnnxBackend.provider_options(backend, "CUDAExecutionProvider") == {"device_id": 1}
    assert OnnxBackend.provider_options(backend, "TensorrtExecutionProvider")["device_id"] == 1
    assert OnnxBackend.provider_options(backend, "CPUExecutionProvider") == {}


# -- int8 graphs ------------------------------------------------------------------------------
def quantized_ops(path: Path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(path)).graph.node} & {
        "DynamicQuantizeMatMul", "MatMulInteger", "DynamicQuantizeLinear"}


def test_int8_export_quantizes_text_and_unet_only(student_copy, backends):
    folder, manifest = resolve_export(student_copy, "int8")
    assert folder == cache_dir_for(student_copy, "int8") and manifest["precision"] == "int8"
    assert manifest["dtype"] == "float32"  # fp32 inputs; the weights inside are int8
    fp32_folder = cache_dir_for(student_copy)
    for part in ("text_encoder", "unet"):
        assert quantized_ops(folder / f"{part}.onnx"), part
        assert (folder / f"{part}.onnx").stat().st_size < (fp32_folder / f"{part}.onnx").stat(
            ).st_size
    for part in ("vae_encoder", "vae_decoder"):
        assert not quantized_ops(folder / f"{part}.onnx")
    assert backends["onnx-int8"].name == "onnx-int8" and backends["onnx"].name == "onnx"
    assert backends["onnx-int8"].precision == "int8"
    # each precision keeps its own export: the fp32 one is still current
    assert resolve_export(student_copy)[1]["precision"] == "fp32"


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).norm() / expected.norm())


def test_int8_outputs_stay_close_to_fp32(backends):
    exact, int8 = backends["onnx"], backends["onnx-int8"]
    prompts = ["a red apple", "rocket"]
    text_exact, text_int8 = exact.encode_text(prompts), int8.encode_text(prompts)
    token_error = relative_error(text_int8.token_states, text_exact.token_states)
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([999, 500])
    unet_error = relative_error(int8.unet(x, t, text_exact, None),
                                exact.unet(x, t, text_exact, None))
    # measured on the tiny model: 1.5% and 0.4% (int8 weights, per-call uint8 activations)
    assert 0 < token_error < 0.05 and 0 < unet_error < 0.02, (token_error, unet_error)
    assert torch.equal(int8.decode(x), exact.decode(x))  # the autoencoder stays fp32


def test_int8_backend_refuses_a_gpu_device(student_copy):
    from engine.api import EngineError
    from engine.runtime import create_backend

    with pytest.raises(EngineError, match="int8 graphs run on the CPU"):
        create_backend(str(student_copy), "onnx-int8", "cuda")


def test_export_cli_int8_and_precision_flags_exclude_each_other(tiny_model_dir, tmp_path, capsys):
    from engine.__main__ import main

    out = tmp_path / "int8"
    assert main(["export-onnx", "--model", str(tiny_model_dir), "--out", str(out),
                 "--int8"]) == 0
    assert read_manifest(out)["precision"] == "int8" and "(int8," in capsys.readouterr().out
    assert main(["export-onnx", "--model", str(tiny_model_dir), "--int8", "--check"]) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["export-onnx", "--model", str(tiny_model_dir), "--int8", "--fp16"])
    assert exit_info.value.code == 2


def test_int8_of_a_graph_with_external_weights_keeps_them_outside(tiny_model_dir, tmp_path,
                                                                 monkeypatch):
    """An SD-1.5 UNet is over protobuf's 2 GiB: its weights live in a side file before and
    after quantization. Here the tiny UNet stands in, moved to a side file by hand."""
    import onnx
    import onnxruntime as ort

    from engine.runtime import onnx_quantize

    folder = tmp_path / "export"
    manifest = export_model(tiny_model_dir, folder)
    unet_path = folder / "unet.onnx"
    session = ort.InferenceSession(str(unet_path), providers=["CPUExecutionProvider"])
    feeds = {"sample": np.random.default_rng(0).standard_normal((1, 4, 4, 4), np.float32),
             "timestep": np.array([999]),
             "encoder_hidden_states": np.random.default_rng(1).standard_normal(
                 tuple([1] + manifest["files"]["unet"]["inputs"]["encoder_hidden_states"][1:]),
                 np.float32)}
    expected = session.run(None, feeds)[0]
    onnx.save_model(onnx.load(str(unet_path)), str(unet_path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="unet_weights.bin", size_threshold=0)
    assert onnx_quantize.external_data_files(unet_path) == [folder / "unet_weights.bin"]
    monkeypatch.setattr(onnx_quantize, "EXTERNAL_DATA_ABOVE_BYTES", 0)
    assert onnx_quantize.quantize_export(folder, manifest)["precision"] == "int8"
    assert not (folder / "unet_weights.bin").exists()  # the fp32 weights are gone
    assert onnx_quantize.external_data_files(unet_path) == [folder / "unet.onnx.data"]
    assert not list(folder.glob(".*-int8"))  # no staging folders left
    got = ort.InferenceSession(str(unet_path), providers=["CPUExecutionProvider"]).run(
        None, feeds)[0]
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 0.02
