"""Loading and sampling on tiny random pipelines built offline."""

import json

import numpy as np
import pytest
import torch

from engine.api import GenerateRequest, InvalidRequestError, ModelLoadError
from engine.pipeline.generator import Generator
from engine.pipeline.tiny import build_tiny_pipeline
from engine.runtime.loading import load_pipeline
from engine.runtime.torch_backend import TorchBackend


@pytest.fixture(scope="module")
def generator(tiny_model_dir):
    return Generator(TorchBackend.load(str(tiny_model_dir), "cpu"))


def test_round_trip_loads_every_part(tiny_model_dir):
    parts = load_pipeline(tiny_model_dir)
    assert parts.image_size == 32 and parts.latent_size == 4 and parts.latent_channels == 4
    assert parts.conditioning_channels == 0
    assert parts.schedule.prediction_type == "epsilon"
    assert type(parts.vae).__name__ == "AutoencoderTiny"
    assert not parts.student_config


def test_generate_shape_dtype_and_range(generator):
    image, timings = generator.generate(GenerateRequest("red apple", seed=1))
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert timings.unet_ms > 0 and timings.decode_ms > 0
    assert timings.total_ms >= timings.unet_ms + timings.decode_ms


def test_same_seed_same_image_and_different_seed_differs(generator):
    first, _ = generator.generate(GenerateRequest("red apple", seed=7))
    again, _ = generator.generate(GenerateRequest("red apple", seed=7))
    other, _ = generator.generate(GenerateRequest("red apple", seed=8))
    np.testing.assert_array_equal(first, again)
    change = np.abs(first.astype(int) - other)
    assert (change > 0).mean() > 0.5 and change.mean() > 2  # most pixels, by several levels


def test_one_and_four_steps_differ(generator):
    one, _ = generator.generate(GenerateRequest("cat", seed=3, steps=1))
    four, _ = generator.generate(GenerateRequest("cat", seed=3, steps=4))
    assert one.shape == four.shape
    change = np.abs(one.astype(int) - four)
    assert (change > 0).mean() > 0.5 and change.mean() > 1  # the later steps redraw the frame


def test_teacher_ddim_with_guidance_runs(generator):
    image, timings = generator.generate(GenerateRequest("cat", seed=3, teacher_steps=4,
                                                        guidance=3.0))
    assert image.shape == (32, 32, 3) and timings.unet_ms > 0


def test_img2img_strength_zero_returns_the_autoencoded_input(generator):
    rng = np.random.default_rng(0)
    init = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    image, _ = generator.generate(GenerateRequest("x", seed=1, init_image=init, strength=0.0))
    backend = generator.backend
    from engine.pipeline.images import image_to_tensor, tensor_to_image

    reconstruction = tensor_to_image(backend.decode(backend.encode_image(image_to_tensor(init,
                                                                                         32))))
    np.testing.assert_array_equal(image, reconstruction)


def test_img2img_strength_one_ignores_the_input(generator):
    first = np.zeros((32, 32, 3), np.uint8)
    second = np.full((32, 32, 3), 255, np.uint8)
    a, _ = generator.generate(GenerateRequest("x", seed=1, init_image=first, strength=1.0))
    b, _ = generator.generate(GenerateRequest("x", seed=1, init_image=second, strength=1.0))
    plain, _ = generator.generate(GenerateRequest("x", seed=1))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, plain)


def test_img2img_mid_strength_depends_on_the_input(generator):
    first = np.zeros((32, 32, 3), np.uint8)
    second = np.full((32, 32, 3), 255, np.uint8)
    a, _ = generator.generate(GenerateRequest("x", seed=1, init_image=first, strength=0.5))
    b, _ = generator.generate(GenerateRequest("x", seed=1, init_image=second, strength=0.5))
    assert np.abs(a.astype(int) - b).max() > 0


def test_eight_channel_unet_with_a_sketch(tiny_sketch_model_dir):
    generator = Generator(TorchBackend.load(str(tiny_sketch_model_dir), "cpu"))
    assert generator.backend.conditioning_channels == 4
    sketch = np.full((64, 48, 3), 255, np.uint8)
    sketch[10:40, 20:22] = 0
    with_sketch, _ = generator.generate(GenerateRequest("cat", seed=2, sketch=sketch))
    without, _ = generator.generate(GenerateRequest("cat", seed=2))
    assert with_sketch.shape == (32, 32, 3)
    assert np.abs(with_sketch.astype(int) - without).max() > 0
    assert len(generator.latent_cache) == 1
    generator.generate(GenerateRequest("dog", seed=2, sketch=sketch))
    assert len(generator.latent_cache) == 1  # the sketch latent was reused by content hash


def test_autoencoder_kl_and_v_prediction(tmp_path):
    folder = build_tiny_pipeline(tmp_path / "kl", autoencoder="kl", prediction_type="v_prediction")
    generator = Generator(TorchBackend.load(str(folder), "cpu"))
    assert generator.schedule.prediction_type == "v_prediction"
    assert generator.backend.parts.latent_scale == 0.5
    image, _ = generator.generate(GenerateRequest("cat", seed=0, steps=2))
    assert image.shape == (32, 32, 3)


def test_student_json_sets_timesteps(tiny_student_dir):
    generator = Generator(TorchBackend.load(str(tiny_student_dir), "cpu"))
    assert generator.is_student and generator.default_timesteps == [999]
    assert generator.timesteps_for(4) == [999, 749, 499, 249]
    assert generator.default_steps == 1


def test_empty_prompt_allowed_and_long_prompt_truncated(generator):
    image, _ = generator.generate(GenerateRequest("", seed=0))
    assert image.shape == (32, 32, 3)
    encoder = generator.backend.parts.text_encoder
    tokens = encoder.tokenize(["a" * 10_000])["input_ids"]
    assert tokens.shape == (1, encoder.max_length)
    long_image, _ = generator.generate(GenerateRequest("word " * 2000, seed=0))
    assert long_image.shape == (32, 32, 3)


@pytest.mark.parametrize("request_kwargs, message", [
    ({"strength": 1.5}, "Strength"),
    ({"strength": -0.1}, "Strength"),
    ({"steps": 0}, "steps"),
    ({"guidance": -1.0}, "Guidance"),
    ({"guidance": float("nan")}, "Guidance"),
    ({"init_image": np.zeros((4, 4), np.float32), "strength": 0.5}, "uint8"),
])
def test_bad_requests_are_clear_errors(generator, request_kwargs, message):
    with pytest.raises(InvalidRequestError, match=message):
        generator.generate(GenerateRequest("x", **request_kwargs))


def test_missing_folder_and_missing_unet(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_pipeline(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no unet/ folder"):
        load_pipeline(tmp_path / "empty")


def test_corrupt_safetensors(tmp_path, tiny_model_dir):
    import shutil

    folder = tmp_path / "corrupt"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ModelLoadError, match="corrupt"):
        load_pipeline(folder)


def test_unknown_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="not available offline"):
        load_pipeline("nobody-here/no-such-model-xyz")


def test_seeded_noise_is_deterministic_per_seed(generator):
    first = generator.noise_source(5)((1, 4, 4, 4))
    second = generator.noise_source(5)((1, 4, 4, 4))
    torch.testing.assert_close(first, second)


def test_student_compare_routes_to_the_teacher(tmp_path, tiny_model_dir):
    folder = build_tiny_pipeline(tmp_path / "student", student_timesteps=[999], seed=1)
    config = json.loads((folder / "student.json").read_text())
    config["teacher"] = str(tiny_model_dir)
    (folder / "student.json").write_text(json.dumps(config))
    student = Generator(TorchBackend.load(str(folder), "cpu"))
    teacher = Generator(TorchBackend.load(str(tiny_model_dir), "cpu"))
    request = GenerateRequest("cat", seed=4, teacher_steps=3, guidance=2.0)
    np.testing.assert_array_equal(student.generate(request)[0], teacher.generate(request)[0])


def test_a_student_runs_teacher_requests_on_the_teacher_backend_it_is_given(tmp_path,
                                                                          tiny_model_dir):
    folder = build_tiny_pipeline(tmp_path / "student", student_timesteps=[999], seed=1)
    loads = []

    def load_teacher():
        loads.append(1)
        return TorchBackend.load(str(tiny_model_dir), "cpu")

    student = Generator(TorchBackend.load(str(folder), "cpu"), teacher_backend=load_teacher)
    teacher = Generator(TorchBackend.load(str(tiny_model_dir), "cpu"))
    request = GenerateRequest("cat", seed=2, teacher_steps=2, guidance=3.0)
    np.testing.assert_array_equal(student.generate(request)[0], teacher.generate(request)[0])
    student.generate(request)
    assert loads == [1]  # loaded on first use, then kept
    assert student.teacher().text_cache is student.text_cache


def test_a_student_whose_student_json_names_no_teacher_says_so(tmp_path):
    folder = build_tiny_pipeline(tmp_path / "student", student_timesteps=[999], seed=1)
    config = json.loads((folder / "student.json").read_text())
    del config["teacher"]
    (folder / "student.json").write_text(json.dumps(config))
    student = Generator(TorchBackend.load(str(folder), "cpu"))
    with pytest.raises(InvalidRequestError, match="names no teacher"):
        student.generate(GenerateRequest("cat", teacher_steps=2))


def test_a_teacher_loads_on_the_device_its_student_runs_on():
    from types import SimpleNamespace

    from engine.runtime import requested_device

    for device, expected in (("cpu", "cpu"), ("cuda:1", "cuda:1"),
                             ("CPUExecutionProvider", "cpu"), ("CUDAExecutionProvider", "cuda"),
                             ("TensorrtExecutionProvider", "tensorrt")):
        assert requested_device(SimpleNamespace(device=device)) == expected


@pytest.mark.parametrize("device", ["gpu", "tensorrt", "cuda:x"])
def test_torch_rejects_unknown_devices_in_one_sentence(device):
    from engine.api import EngineError
    from engine.runtime.torch_backend import pick_device

    with pytest.raises(EngineError, match="Unknown device"):
        pick_device(device)


def test_embedded_name_without_a_trained_unet_is_a_clear_error(monkeypatch, tmp_path):
    from engine.runtime import loading

    monkeypatch.setattr(loading, "ASSETS_DIR", tmp_path)
    (tmp_path / "teacher" / "vae").mkdir(parents=True)
    with pytest.raises(ModelLoadError, match="not installed .* yet; pass a model folder"):
        load_pipeline("embedded-teacher")
    assert loading.default_model() is None


def test_a_refinement_reuses_its_previews_first_step(tiny_sketch_model_dir):
    generator = Generator(TorchBackend.load(str(tiny_sketch_model_dir), "cpu"))
    calls = []
    unet = generator.backend.unet
    generator.backend.unet = lambda *args: calls.append(1) or unet(*args)
    sketch = np.full((32, 32, 3), 255, np.uint8)
    sketch[8:24, 15:17] = 0
    preview, _ = generator.generate(GenerateRequest("cat", seed=2, steps=1, sketch=sketch))
    full, _ = generator.generate(GenerateRequest("cat", seed=2, steps=4, sketch=sketch))
    assert len(calls) == 1 + 3  # the four-step frame skipped the step the preview made
    other_sketch = sketch.copy()
    other_sketch[2:6, 2:6] = 0
    generator.generate(GenerateRequest("cat", seed=2, steps=4, sketch=other_sketch))
    generator.generate(GenerateRequest("cat", seed=3, steps=4, sketch=sketch))
    assert len(calls) == 4 + 4 + 4  # another sketch or seed is another first step

    generator.clear_caches()
    calls.clear()
    again, _ = generator.generate(GenerateRequest("cat", seed=2, steps=4, sketch=sketch))
    assert len(calls) == 4 and np.array_equal(again, full)
    alone, _ = generator.generate(GenerateRequest("cat", seed=2, steps=1, sketch=sketch))
    assert np.array_equal(alone, preview)


def test_gaussian_blur_keeps_flat_fields_and_damps_fine_detail():
    from engine.diffusion.sampling import gaussian_blur

    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    assert gaussian_blur(latents, 0.0) is latents
    flat = torch.full((1, 4, 16, 16), 0.7)
    assert torch.allclose(gaussian_blur(flat, 0.6), flat, atol=1e-6)  # edges replicated
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 2.0 - 1.0
    checker = checker.expand(1, 4, 16, 16).contiguous()
    blurred = gaussian_blur(checker, 0.6)
    assert blurred.shape == checker.shape
    assert blurred[..., 4:12, 4:12].abs().max() < 0.2  # the finest pattern: 0.11 of it left
    assert abs(float(gaussian_blur(latents, 0.6).mean() - latents.mean())) < 0.02


def test_one_step_smoothing_blurs_only_the_one_step_frame(tiny_student_dir, tmp_path):
    import shutil

    smooth_dir = shutil.copytree(tiny_student_dir, tmp_path / "smooth")
    config = json.loads((smooth_dir / "student.json").read_text())
    (smooth_dir / "student.json").write_text(json.dumps({**config, "timesteps": [999, 299],
                                                         "one_step_smoothing": 0.6}))
    plain_dir = shutil.copytree(smooth_dir, tmp_path / "plain")
    (plain_dir / "student.json").write_text(json.dumps({**config, "timesteps": [999, 299]}))
    smooth = Generator(TorchBackend.load(str(smooth_dir), "cpu"))
    plain = Generator(TorchBackend.load(str(plain_dir), "cpu"))
    assert smooth.one_step_smoothing == 0.6 and plain.one_step_smoothing == 0.0

    def image(generator, **fields):
        return generator.generate(GenerateRequest("red apple", seed=3, **fields))[0]

    assert not np.array_equal(image(smooth, steps=1), image(plain, steps=1))
    # the two-step frame refines the unsmoothed first step (cached by the one-step frame)
    np.testing.assert_array_equal(image(smooth, steps=2), image(plain, steps=2))
    edit = np.full((32, 32, 3), 200, np.uint8)  # edits start below t = 999: no blur
    np.testing.assert_array_equal(image(smooth, steps=1, init_image=edit, strength=0.5),
                                  image(plain, steps=1, init_image=edit, strength=0.5))


def test_prompt_suggestions_come_from_the_model_folders_prompts_txt(tiny_model_dir, tmp_path):
    import shutil

    from engine.pipeline.generator import Generator
    from engine.runtime import create_backend
    from engine.runtime.loading import PROMPTS_FILE, read_prompt_suggestions

    assert read_prompt_suggestions(tiny_model_dir) == []
    folder = tmp_path / "with-prompts"
    shutil.copytree(tiny_model_dir, folder)
    (folder / PROMPTS_FILE).write_text("red apple\n\n  cat face \nred apple\n", "utf-8")
    assert read_prompt_suggestions(folder) == ["red apple", "cat face"]
    assert Generator(create_backend(str(folder), "torch", "cpu")).prompt_suggestions == \
        ["red apple", "cat face"]
    (folder / PROMPTS_FILE).write_bytes(b"\xff\xfe not utf-8 \xff")
    assert read_prompt_suggestions(folder) == []  # optional: a bad file is no suggestions


def test_the_shipped_models_suggest_their_training_captions():
    from engine.runtime.loading import ASSETS_DIR, read_prompt_suggestions

    for model in ("teacher", "student"):
        prompts = read_prompt_suggestions(ASSETS_DIR / model)
        assert len(prompts) > 3000 and "red apple" in prompts and "cat face" in prompts
