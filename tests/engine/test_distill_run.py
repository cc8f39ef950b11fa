"""The distillation trainer and CLI on tiny random teachers: exact resume, progress events,
SIGTERM, DDP, bad input, v-prediction, LoRA merge."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.distill.config import DistillConfig
from engine.distill.progress import ProgressReporter

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}



@pytest.fixture(scope="module")
def real_images_dir(tmp_path_factory) -> Path:
    from PIL import Image

    folder = tmp_path_factory.mktemp("real")
    rng = np.random.default_rng(0)
    for index in range(6):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
            folder / f"image{index}.png")
        (folder / f"image{index}.txt").write_text(f"a red square {index}")
    return folder


def tiny_config(teacher: Path, out: Path, **overrides) -> DistillConfig:
    values = dict(teacher=str(teacher), out=str(out), steps=2, batch=2, lr=1e-3, warmup_steps=2,
                  regression_pairs=4, regression_ddim_steps=2, sample_every=0, device="cpu",
                  progress="none", checkpoint_every=100)
    values.update(overrides)
    return DistillConfig(**values)


def run_trainer(config: DistillConfig, stream=None) -> int:
    from accelerate.state import AcceleratorState

    from engine.distill.trainer import DistillTrainer

    AcceleratorState._reset_state(reset_partial_state=True)
    reporter = ProgressReporter("json", stream=stream) if stream is not None else None
    return DistillTrainer(config, reporter).train()


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", "distill", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


# -- exact resume + progress events ----------------------------------------------------------
def test_two_plus_two_steps_resume_to_the_same_weights_as_four(tiny_model_dir, real_images_dir,
                                                               tmp_path, one_thread):
    options = dict(method="dmd2", student_steps=4, critic_ratio=2, gan_weight=1e-2,
                   regression_weight=0.25, real_data=str(real_images_dir), ema_decay=0.5)
    straight = tmp_path / "straight"
    events = io.StringIO()
    assert run_trainer(tiny_config(tiny_model_dir, straight, steps=4, **options), events) == 4
    resumed = tmp_path / "resumed"
    assert run_trainer(tiny_config(tiny_model_dir, resumed, steps=2, **options)) == 2
    assert run_trainer(tiny_config(tiny_model_dir, resumed, steps=4, **options)) == 4

    for name in ("model.safetensors", "model_1.safetensors"):  # student, critic (+ GAN head)
        expected = load_file(straight / "checkpoints" / "step-4" / name)
        actual = load_file(resumed / "checkpoints" / "step-4" / name)
        assert expected.keys() == actual.keys()
        for key in expected:
            assert torch.equal(expected[key], actual[key]), key
    # student/ holds the EMA (resumed exactly from the checkpoint), not the last weights
    unet_file = Path("student") / "unet" / "diffusion_pytorch_model.safetensors"
    averaged = load_file(resumed / unet_file)
    assert all(torch.equal(averaged[k], v) for k, v in load_file(straight / unet_file).items())
    last = load_file(resumed / "checkpoints" / "step-4" / "model.safetensors")
    assert any(not torch.equal(v, last[f"unet.{k}"].half()) for k, v in averaged.items())
    metrics = (resumed / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in metrics]
    assert steps == [1, 2, 3, 4]

    lines = [json.loads(line) for line in events.getvalue().splitlines()]
    progress = [e for e in lines if e["event"] == "progress"]
    assert [e["step"] for e in progress] == [1, 2, 3, 4] and progress[-1]["total"] == 4
    assert {"dm", "regression", "gan_generator", "critic_denoise", "gan_critic"} <= set(
        progress[-1]["losses"])
    assert all(k in progress[-1] for k in ("lr", "it_s", "eta_s"))
    assert lines[-1]["event"] == "done" and lines[-1]["step"] == 4
    assert any(e["event"] == "stage" and e["name"] == "making regression pairs" for e in lines)
    assert any(e["event"] == "checkpoint" for e in lines)


def test_init_from_starts_a_one_step_run_at_a_four_step_checkpoint(tiny_model_dir, tmp_path,
                                                                    one_thread):
    from engine.distill.build import build_networks
    from engine.runtime.loading import load_pipeline

    four = tmp_path / "four"
    assert run_trainer(tiny_config(tiny_model_dir, four, steps=2, method="dmd2",
                                   student_steps=4, checkpoint_every=2)) == 2
    source = four / "checkpoints" / "step-2"
    config = tiny_config(tiny_model_dir, tmp_path / "one", init_from=str(source),
                         method="dmd2", gan_weight=0.0).resolve()
    networks = build_networks(config, load_pipeline(tiny_model_dir), torch.device("cpu"))
    for network, name in ((networks.student, "model.safetensors"),
                          (networks.critic, "model_1.safetensors")):
        expected, actual = load_file(source / name), network.state_dict()
        assert all(torch.equal(actual[key], expected[key]) for key in expected)
    teacher_unet = load_pipeline(tiny_model_dir).unet.state_dict()
    student_unet = networks.student.unet.state_dict()
    assert any(not torch.equal(student_unet[k], teacher_unet[k].float()) for k in teacher_unet)
    assert run_trainer(config) == 2  # and it trains from there


def test_init_from_a_student_folder_starts_the_student_there_and_the_critic_at_the_teacher(
        tiny_model_dir, tmp_path, one_thread):
    from engine.distill.build import build_networks
    from engine.runtime.loading import load_pipeline

    first = tmp_path / "first"
    assert run_trainer(tiny_config(tiny_model_dir, first, steps=2, checkpoint_every=2)) == 2
    student_weights = load_file(first / "student" / "unet" / "diffusion_pytorch_model.safetensors")
    config = tiny_config(tiny_model_dir, tmp_path / "next", init_from=str(first / "student"),
                         method="dmd2").resolve()
    networks = build_networks(config, load_pipeline(tiny_model_dir), torch.device("cpu"))
    student_unet = networks.student.unet.state_dict()
    assert all(torch.equal(student_unet[k], v.float()) for k, v in student_weights.items())
    teacher_unet = load_pipeline(tiny_model_dir).unet.state_dict()
    critic_unet = networks.critic.unet.state_dict()
    assert all(torch.equal(critic_unet[k], v.float()) for k, v in teacher_unet.items())
    assert any(not torch.equal(student_unet[k], v.float()) for k, v in teacher_unet.items())
    assert run_trainer(config) == 2


def test_critic_warmup_trains_the_critic_alone_first(tiny_model_dir, tmp_path, one_thread):
    from engine.distill.trainer import DistillTrainer

    config = tiny_config(tiny_model_dir, tmp_path / "run", steps=3, method="dmd2",
                         critic_warmup_steps=2, critic_lr=3e-3)
    trainer = DistillTrainer(config)
    assert [trainer.generator_optimizer.param_groups[0]["initial_lr"],
            trainer.critic_optimizer.param_groups[0]["initial_lr"]] == [1e-3, 3e-3]
    student = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    critic = {k: v.clone() for k, v in trainer.critic.state_dict().items()}

    def changed(network, before):
        return any(not torch.equal(v, before[k]) for k, v in network.state_dict().items())

    trainer.run.create()
    trainer.prepare_assets()
    for step in range(2):
        losses = trainer.train_step(step)
        assert "critic_denoise" in losses and "dm" not in losses
    assert changed(trainer.critic, critic) and not changed(trainer.student, student)
    assert trainer.generator_lr.last_epoch == 0  # its LR warm-up has not started
    assert "dm" in trainer.train_step(2)
    assert changed(trainer.student, student)


def test_v_prediction_teacher_runs_one_step(tmp_path, one_thread):
    from engine.pipeline.tiny import build_tiny_pipeline
    from engine.runtime.loading import load_pipeline

    teacher = build_tiny_pipeline(tmp_path / "v_teacher", prediction_type="v_prediction")
    out = tmp_path / "run"
    assert run_trainer(tiny_config(teacher, out, steps=1, regression_weight=0.0,
                                   sample_every=1)) == 1
    assert (out / "samples" / "step-1.png").is_file()
    student = load_pipeline(out / "student")
    assert student.schedule.prediction_type == "v_prediction"
    assert student.student_config["timesteps"] == [999]


def test_lora_student_is_merged_into_a_plain_unet(tiny_sketch_model_dir):
    from diffusers import UNet2DConditionModel

    from engine.distill.networks import add_lora, merged_unet

    unet = UNet2DConditionModel.from_pretrained(str(tiny_sketch_model_dir / "unet"))
    add_lora(unet, 4)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)  # as if trained
    plain = merged_unet(unet)
    assert not any("lora" in key for key in plain.state_dict())
    x, text = torch.randn(2, 8, 4, 4), torch.randn(2, 16, 32)
    pooled, t = torch.randn(2, 32), torch.tensor([999, 500])
    with torch.no_grad():
        expected = unet(x, t, text, class_labels=pooled).sample
        actual = plain(x, t, text, class_labels=pooled).sample
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


# -- CLI -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("flags", "message"), [
    (["--lr=-1"], "--lr must be positive"),
    (["--critic-lr", "0"], "--critic-lr must be positive"),
    (["--method", "gan"], "Unknown method"),
    (["--max-minutes", "0"], "--max-minutes must be positive"),
    (["--teacher", "NO_UNET"], "has no unet/ folder"),
    (["--init-from", "NO_UNET"], "has no model.safetensors"),
])
def test_bad_values_fail_with_one_line_and_exit_code_2(tmp_path, tiny_model_dir, flags, message):
    no_unet = tmp_path / "no_unet"
    (no_unet / "vae").mkdir(parents=True)
    flags = [str(no_unet) if flag == "NO_UNET" else flag for flag in flags]
    if "--teacher" not in flags:
        flags = ["--teacher", str(tiny_model_dir), *flags]
    result = run_cli(*flags, "--out", str(tmp_path / "run"), timeout=60)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_sigterm_saves_a_loadable_checkpoint_and_student(tiny_model_dir, tmp_path):
    from engine.distill.checkpoint import latest_checkpoint
    from engine.runtime.loading import load_pipeline

    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "distill", "--teacher", str(tiny_model_dir), "--out",
         str(out), "--steps", "100000", "--batch", "2", "--regression-weight", "0",
         "--sample-every", "0", "--progress", "json", "--device", "cpu"],
        cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        for line in process.stdout:
            if json.loads(line)["event"] == "progress":
                break
            assert time.monotonic() < deadline
        process.send_signal(signal.SIGTERM)
        remaining, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    events = [json.loads(line) for line in remaining.splitlines()]
    assert events[-1]["event"] == "done" and events[-1]["stopped"] is True
    step, folder = latest_checkpoint(out / "checkpoints")
    assert step == events[-1]["step"] >= 1
    assert json.loads((folder / "checkpoint.json").read_text())["step"] == step
    student = load_pipeline(out / "student")
    assert student.student_config["training_steps"] == step
    assert student.unet.dtype == torch.float32  # loaded as asked; stored in fp16
    assert (out / "config.json").is_file() and (out / "metrics.jsonl").is_file()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_ddp_run(tiny_model_dir, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(free_port()), "-m", "engine", "distill",
               "--teacher", str(tiny_model_dir), "--out", str(out), "--steps", "2",
               "--batch", "2", "--regression-weight", "0", "--student-steps", "4",
               "--sample-every", "0", "--progress", "json", "--device", "cpu"]
    result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [e["step"] for e in events if e["event"] == "progress"] == [1, 2]  # rank 0 only
    checkpoint = out / "checkpoints" / "step-2"
    assert (checkpoint / "random_states_0.pkl").is_file()
    assert (checkpoint / "random_states_1.pkl").is_file()
    assert (out / "student" / "unet").is_dir()


def test_a_time_limit_stops_like_sigterm_with_a_checkpoint(tiny_model_dir, tmp_path):
    from engine.distill.checkpoint import latest_checkpoint

    config = tiny_config(tiny_model_dir, tmp_path / "run", steps=100000,
                         regression_weight=0.0)
    from accelerate.state import AcceleratorState

    from engine.distill.trainer import DistillTrainer

    AcceleratorState._reset_state(reset_partial_state=True)
    stream = io.StringIO()
    started = time.monotonic()
    step = DistillTrainer(config, ProgressReporter("json", stream=stream)).train(max_seconds=3)
    assert 0 <= step < 100000 and time.monotonic() - started < 60
    done = json.loads(stream.getvalue().splitlines()[-1])
    assert done["event"] == "done" and done["stopped"] is True and done["step"] == step
    assert latest_checkpoint(tmp_path / "run" / "checkpoints")[0] == step
    assert (tmp_path / "run" / "student" / "student.json").is_file()


# -- what --method means -------------------------------------------------------------------
def test_dmd_is_distribution_matching_with_regression_and_no_gan(tmp_path):
    config = DistillConfig(method="dmd", real_data=str(tmp_path)).resolve()
    assert (config.regression_weight, config.gan_weight, config.critic_ratio) == (0.25, 0.0, 1)
    assert config.uses_regression and not config.uses_gan
    assert config.method_defaults == ["critic_ratio", "gan_weight", "regression_weight"]


def test_dmd2_drops_regression_and_adds_the_gan_only_with_real_data(tmp_path):
    with_data = DistillConfig(method="dmd2", real_data=str(tmp_path)).resolve()
    assert (with_data.regression_weight, with_data.gan_weight, with_data.critic_ratio) == (
        0.0, 1e-3, 2)
    assert with_data.uses_gan and not with_data.uses_regression
    without = DistillConfig(method="dmd2").resolve()
    assert (without.regression_weight, without.gan_weight, without.critic_ratio) == (0.0, 0.0, 2)
    assert DistillConfig().resolve().method == "dmd2"


def test_explicit_flags_override_the_methods_defaults_and_config_json_says_which(tmp_path):
    config = DistillConfig(method="dmd2", real_data=str(tmp_path), regression_weight=0.5,
                           critic_ratio=5).resolve()
    assert (config.regression_weight, config.gan_weight, config.critic_ratio) == (0.5, 1e-3, 5)
    assert config.method_defaults == ["gan_weight"]
    config.save(tmp_path / "config.json")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["regression_weight"], saved["gan_weight"], saved["critic_ratio"]) == (
        0.5, 1e-3, 5)
    assert saved["method_defaults"] == ["gan_weight"]
    assert DistillConfig(method="dmd", regression_weight=0.0).resolve().regression_weight == 0
    with pytest.raises(Exception, match="The GAN loss is part of DMD2"):
        DistillConfig(method="dmd", gan_weight=1e-3).resolve()


def test_a_run_saved_with_every_weight_resumes_with_those_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"method": "dmd2", "regression_weight": 0.25, "gan_weight": 0.0, "critic_ratio": 2}))
    resumed = DistillConfig(steps=10).merged_for_resume(
        DistillConfig.load(tmp_path / "config.json"), {"steps"}).resolve()
    assert (resumed.regression_weight, resumed.gan_weight, resumed.critic_ratio) == (0.25, 0, 2)
    assert resumed.method_defaults == []


def test_raising_steps_on_resume_keeps_the_clamped_warmup():
    started = DistillConfig(steps=100, warmup_steps=500).resolve()
    assert started.warmup_steps == started.effective_warmup == 100
    saved = DistillConfig.from_dict(started.to_dict())
    resumed = DistillConfig(steps=2000).merged_for_resume(saved, {"steps"}).resolve()
    assert resumed.steps == 2000 and resumed.effective_warmup == 100


def test_a_chosen_student_schedule_is_trained_and_written(tiny_model_dir, tmp_path, one_thread):
    from engine.distill.trainer import DistillTrainer

    out = tmp_path / "run"
    config = tiny_config(tiny_model_dir, out, method="dmd2", student_steps=2,
                         student_timesteps=[999, 299], regression_weight=0.0,
                         checkpoint_every=2).resolve()
    assert run_trainer(config) == 2
    student = json.loads((out / "student" / "student.json").read_text())
    assert student["timesteps"] == [999, 299]
    assert DistillConfig.load(out / "config.json").student_timesteps == [999, 299]
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(Exception, match="must start at the teacher's top timestep 999"):
        DistillTrainer(tiny_config(tiny_model_dir, tmp_path / "bad", method="dmd2",
                                   student_steps=2, student_timesteps=[899, 299]).resolve())


@pytest.mark.parametrize(("flags", "message"), [
    (["--student-timesteps", "999,abc"], "must be integers"),
    (["--student-timesteps", "299,999"], "must decrease"),
    (["--student-timesteps", "999,299", "--student-steps", "4"], "disagrees with the 2"),
])
def test_bad_student_timesteps_fail_with_one_line(tmp_path, tiny_model_dir, flags, message):
    result = run_cli("--teacher", str(tiny_model_dir), "--method", "dmd2", *flags, "--out",
                     str(tmp_path / "run"), timeout=60)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr


def test_student_timesteps_alone_set_the_step_count(tmp_path, tiny_model_dir):
    import argparse

    from engine.cli import distill

    parser = argparse.ArgumentParser()
    distill.add_parser(parser.add_subparsers())
    args = parser.parse_args(["distill", "--teacher", str(tiny_model_dir), "--method", "dmd2",
                              "--student-timesteps", "999,299", "--out", str(tmp_path / "r")])
    config = distill.prepare_config(args)
    assert config.student_steps == 2 and config.student_timesteps == [999, 299]


def test_a_students_export_carries_its_teachers_prompt_suggestions(tiny_model_dir, tmp_path):
    import shutil

    from diffusers import UNet2DConditionModel

    from engine.distill.run_folder import export_student
    from engine.runtime.loading import read_prompt_suggestions

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_model_dir, teacher)
    (teacher / "prompts.txt").write_text("cat face\nrocket\n", "utf-8")
    unet = UNet2DConditionModel.from_pretrained(str(teacher / "unet"))
    export_student(tmp_path / "student", teacher, unet, {"timesteps": [999]})
    assert read_prompt_suggestions(tmp_path / "student") == ["cat face", "rocket"]
    export_student(tmp_path / "plain", tiny_model_dir, unet, {"timesteps": [999]})
    assert not (tmp_path / "plain" / "prompts.txt").exists()
