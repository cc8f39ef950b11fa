"""DMD / DMD2 trainer on HF accelerate: one process, DDP or FSDP with the same code.

One step = one generator update followed by critic_ratio critic updates (DMD2's two-time-
scale rule; ratio 1 is DMD v1). Every random draw comes from a generator seeded by
(seed, step, stream, rank), and prompt order is a function of the step, so --resume
replays exactly; accelerate's save_state also restores optimizers, LR schedules and RNGs.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from engine.api import EngineError
from engine.diffusion.schedule import student_timesteps, timestep_tensor
from engine.distill import build
from engine.distill import checkpoint as ckpt
from engine.distill.assets import RunAssets, prepare_assets
from engine.distill.config import DistillConfig
from engine.distill.data import (
    default_prompts,
    epoch_indices,
    resolve_sketch_fraction,
    sample_prompts,
    sketch_conditioning,
    sketched_count,
    step_generator,
)
from engine.distill.ema import StudentEma
from engine.distill.losses import (
    CriticDenoisingLoss,
    DistributionMatchingLoss,
    GanLoss,
    RegressionLoss,
    random_noise_like,
)
from engine.distill.networks import cfg_x0_function, x0_function
from engine.distill.outputs import export_student_folder, sample_grid, teacher_grid
from engine.distill.progress import ProgressReporter
from engine.distill.regression import regression_batch
from engine.distill.run_folder import RunFolder
from engine.distill.text_cache import CaptionEmbeddings
from engine.runtime.text import TextEmbedding


def student_schedule(config: DistillConfig, num_train_timesteps: int) -> list[int]:
    """The student's timesteps: --student-timesteps, else evenly spaced from the top. The
    first must be the top one: the student starts from pure noise (DMD2 sec. 4.5)."""
    if config.student_timesteps is None:
        return student_timesteps(config.student_steps, num_train_timesteps)
    timesteps = [int(t) for t in config.student_timesteps]
    if timesteps[0] != num_train_timesteps - 1:
        raise EngineError(f"--student-timesteps must start at the teacher's top timestep "
                          f"{num_train_timesteps - 1}, not {timesteps[0]}.")
    return timesteps


class DistillTrainer:
    """Owns the networks, optimisers and run folder of one distillation run."""

    def __init__(self, config: DistillConfig, reporter: ProgressReporter | None = None):
        build.quiet_libraries()
        self.config = config.resolve()
        self.run = RunFolder(config.out)
        self.stop_requested = False
        self.deadline: float | None = None  # time.monotonic() at which train() stops
        # 1. accelerator and teacher
        self.accelerator = build.make_accelerator(config)
        self.reporter = reporter or ProgressReporter(config.progress,
                                                     self.accelerator.is_main_process)
        self.device = self.accelerator.device
        self.reporter.stage("loading teacher", 0, 1)
        self.parts = build.load_teacher(config, self.device)
        self.reporter.stage("loading teacher", 1, 1)
        self.schedule = self.parts.schedule
        top = self.schedule.num_train_timesteps
        self.timesteps = student_schedule(config, top)
        # 2. student and critic (fp32 copies of the teacher), optimisers, schedules
        from accelerate.utils import set_seed

        set_seed(config.seed)  # GAN head and LoRA initialisation (identical on every rank)
        networks = build.build_networks(config, self.parts, self.device)
        self.teacher = networks.teacher
        generator_optimizer = build.make_optimizer(networks.student.parameters(), config,
                                                   config.lr)
        critic_optimizer = build.make_optimizer(networks.critic.parameters(), config,
                                                config.critic_lr or config.lr)
        self.generator_lr = build.constant_with_warmup(generator_optimizer,
                                                       config.effective_warmup)
        self.critic_lr = build.constant_with_warmup(critic_optimizer, config.effective_warmup)
        # LR schedules are stepped here once per step (accelerate's wrapper would step them
        # once per process) and registered so save_state/load_state carry them.
        self.accelerator.register_for_checkpointing(self.generator_lr, self.critic_lr)
        (self.student, self.critic, self.generator_optimizer,
         self.critic_optimizer) = self.accelerator.prepare(
            networks.student, networks.critic, generator_optimizer, critic_optimizer)
        self.ema = None
        if config.ema_decay:
            self.ema = StudentEma(self.accelerator.unwrap_model(self.student), config.ema_decay)
            self.accelerator.register_for_checkpointing(self.ema)
        # 3. losses
        self.dm_loss = DistributionMatchingLoss(self.schedule, config.dm_min_t_fraction,
                                                config.dm_max_t_fraction)
        self.critic_loss = CriticDenoisingLoss(self.schedule)
        self.regression_loss = RegressionLoss(config.regression_distance)
        self.gan_loss = GanLoss(self.schedule, config.gan_weight, config.gan_critic_weight)
        # 4. prompts, unconditional embedding, share of sketch-conditioned samples (resolved
        #    here so config.json and resumes record the value used)
        self.prompts = default_prompts(config.teacher, config.prompts, config.real_data)
        self.captions = CaptionEmbeddings(self.parts.text_encoder, self.device, self.prompts,
                                          capacity=min(max(8192, len(self.prompts)), 16384))
        self.uncond = self.encode([""])
        config.sketch_fraction = self.sketch_fraction = resolve_sketch_fraction(
            config, self.parts.conditioning_channels, self.parts.latent_channels)
        self.assets: RunAssets | None = None

    def prepare_assets(self) -> RunAssets:
        """The run's cached inputs (regression pairs, real and sketch latents), kept here."""
        self.assets = prepare_assets(self.config, self.run, self.parts, self.teacher,
                                     self.prompts, self.sketch_fraction, self.accelerator,
                                     self.reporter)
        return self.assets

    # -- helpers -----------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    def encode(self, prompts: list[str]) -> TextEmbedding:
        return self.captions(prompts)

    def latent_shape(self, batch: int) -> tuple[int, int, int, int]:
        size = self.parts.latent_size
        return (batch, self.parts.latent_channels, size, size)

    def student_x0(self, x_t: torch.Tensor, t: torch.Tensor, text: TextEmbedding,
                   conditioning: torch.Tensor | None = None) -> torch.Tensor:
        with self.accelerator.autocast():
            output = self.student(x_t, t.to(self.device), text.token_states, text.pooled,
                                  conditioning)
        return self.schedule.to_x0(output, x_t, t)

    def draw_batch(self, position: int, stream: str) -> tuple[TextEmbedding,
                                                             torch.Tensor | None]:
        """Text (and sketch conditioning, None without sketches) of this rank's batch number
        `position` of a stream. The first sketched_count() samples take a (caption, sketch)
        pair of the real data, the others a prompt and zeros."""
        config, batch = self.config, self.config.batch
        ids = epoch_indices(len(self.prompts), batch, position, config.seed, self.rank,
                            self.world, stream=stream)
        captions = [self.prompts[i] for i in ids]
        if not self.sketch_fraction:
            return self.encode(captions), None
        pool = self.assets.sketch_ids
        count = sketched_count(self.sketch_fraction, batch, position)
        picks = epoch_indices(len(pool), batch, position, config.seed, self.rank, self.world,
                              stream=f"{stream}-sketches")[:count]
        sketch_ids = [pool[i] for i in picks]
        captions[:count] = [self.assets.real_captions[i] for i in sketch_ids]
        conditioning = sketch_conditioning(self.assets.sketch_latents, sketch_ids, batch)
        return self.encode(captions), conditioning.to(self.device)

    # -- student sampling with backward simulation (DMD2 sec. 4.5) ----------------------------
    def simulate_to(self, index: int, text: TextEmbedding, conditioning: torch.Tensor | None,
                    rng: torch.Generator) -> torch.Tensor:
        """x_t at timesteps[index], reached by running the student without gradients from
        pure noise and re-noising each x0 with fresh noise (DMD2 backward simulation)."""
        batch = text.token_states.shape[0]
        x_t = torch.randn(self.latent_shape(batch), generator=rng).to(self.device)
        with torch.no_grad():
            for position in range(index):
                x0 = self.student_x0(x_t, timestep_tensor(self.timesteps[position], batch), text,
                                     conditioning)
                next_t = timestep_tensor(self.timesteps[position + 1], batch)
                x_t = self.schedule.add_noise(x0, random_noise_like(x0, rng), next_t)
        return x_t

    def pick_index(self, shared_rng: torch.Generator) -> int:
        """The step-list index trained this step, the same on every rank."""
        return int(torch.randint(0, len(self.timesteps), (1,), generator=shared_rng))

    # -- one generator update ----------------------------------------------------------------
    def generator_update(self, step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor,
                                                    TextEmbedding, torch.Tensor | None]:
        """DM loss (+ regression, + GAN) on the student; returns losses, x0, text and the
        sketch conditioning, which the student, critic and teacher all see."""
        config, batch = self.config, self.config.batch
        rng = step_generator(config.seed, step, "generator", self.rank)
        index = self.pick_index(step_generator(config.seed, step, "shared"))
        text, conditioning = self.draw_batch(step, "prompts")
        x_t = self.simulate_to(index, text, conditioning, rng)
        t = timestep_tensor(self.timesteps[index], batch)
        # One student forward (DDP: one forward per backward) for the DM batch and the
        # regression batch (pure noise at t = 999 -> cached teacher x0, text only).
        x_in, t_in, text_in, cond_in = x_t, t, text, conditioning
        if config.uses_regression:
            pairs = self.assets.pairs
            pair_ids = epoch_indices(len(pairs), config.regression_batch, step, config.seed,
                                     self.rank, self.world, stream="regression")
            reg_noise, reg_text, reg_x0_ref = regression_batch(
                pairs, pair_ids, self.encode, self.device)
            x_in = torch.cat([x_t, reg_noise])
            t_in = torch.cat([t, timestep_tensor(self.timesteps[0], len(pair_ids))])
            text_in = TextEmbedding.cat([text, reg_text])
            if conditioning is not None:
                cond_in = torch.cat([conditioning, conditioning.new_zeros(
                    (len(pair_ids), *conditioning.shape[1:]))])
        x0_all = self.student_x0(x_in, t_in, text_in, cond_in)
        x0 = x0_all[:batch]
        losses: dict[str, torch.Tensor] = {}
        with self.accelerator.autocast():
            real_fn = cfg_x0_function(self.teacher, self.schedule, text, self.uncond,
                                      conditioning, config.guidance)
            fake_fn = x0_function(self.critic, self.schedule, text, conditioning)
            losses["dm"] = self.dm_loss(x0, real_fn, fake_fn, rng)
        total = losses["dm"]
        if config.uses_regression:
            losses["regression"] = self.regression_loss(x0_all[batch:], reg_x0_ref)
            total = total + config.regression_weight * losses["regression"]
        if config.uses_gan:
            losses["gan_generator"] = self.generator_gan_loss(x0, text, conditioning, rng)
            total = total + losses["gan_generator"]
        losses["generator"] = total
        self.optimizer_step(total, self.student, self.generator_optimizer)
        return losses, x0.detach(), text, conditioning

    def generator_gan_loss(self, x0: torch.Tensor, text: TextEmbedding,
                           conditioning: torch.Tensor | None,
                           rng: torch.Generator) -> torch.Tensor:
        """GanLoss.generator_loss through the critic trunk (DMD2 sec. 4.3); the critic's own
        gradients from this term are cleared before its next update, so it is not trained."""
        x_t, t = self.gan_loss.noisy_fake(x0, rng)
        with self.accelerator.autocast():
            output, logits = self.critic(x_t, t.to(self.device), text.token_states, text.pooled,
                                         conditioning, with_logits=True)
        # 0 * output keeps every critic parameter in the graph (DDP without unused params).
        return self.gan_loss.generator_loss(logits) + 0.0 * output.float().mean()

    # -- critic updates ----------------------------------------------------------------------
    def critic_update(self, step: int, repeat: int, x0: torch.Tensor | None,
                      text: TextEmbedding | None,
                      conditioning: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Denoising loss on detached student samples (+ GAN classification, DMD2); x0 None:
        draw fresh samples."""
        config = self.config
        rng = step_generator(config.seed, step, f"critic-{repeat}", self.rank)
        position = step * config.critic_ratio + repeat  # this critic update's batch number
        if x0 is None or repeat > 0:  # TTUR: fresh student samples for extra critic updates
            index = self.pick_index(step_generator(config.seed, step, f"shared-{repeat}"))
            text, conditioning = self.draw_batch(position, "critic-prompts")
            with torch.no_grad():
                x_t = self.simulate_to(index, text, conditioning, rng)
                t = timestep_tensor(self.timesteps[index], config.batch)
                x0 = self.student_x0(x_t, t, text, conditioning)
        x_t, t, target = self.critic_loss.noisy_inputs(x0, rng)
        losses: dict[str, torch.Tensor] = {}
        batch = x0.shape[0]
        if config.uses_gan:
            # Real samples carry their own sketches in the same share as the student's.
            sketched = sketched_count(self.sketch_fraction, batch, position)
            real_latents, real_text, real_cond = self.assets.real_batch(
                position, batch, self.rank, self.world, self.encode, config.seed, sketched)
            real_x_t = self.gan_loss.noisy_real(real_latents, t, rng)
            both = TextEmbedding.cat([text, real_text])
            both_cond = None if conditioning is None else torch.cat([conditioning, real_cond])
            with self.accelerator.autocast():
                output, logits = self.critic(torch.cat([x_t, real_x_t]),
                                             torch.cat([t, t]).to(self.device),
                                             both.token_states, both.pooled, both_cond,
                                             with_logits=True)
            losses["critic_denoise"] = self.critic_loss.loss_from_output(output[:batch], target)
            losses["gan_critic"] = self.gan_loss.critic_loss(logits[batch:], logits[:batch])
            total = losses["critic_denoise"] + losses["gan_critic"]
        else:
            with self.accelerator.autocast():
                output, _ = self.critic(x_t, t.to(self.device), text.token_states, text.pooled,
                                        conditioning)
            losses["critic_denoise"] = self.critic_loss.loss_from_output(output, target)
            total = losses["critic_denoise"]
        self.optimizer_step(total, self.critic, self.critic_optimizer)
        return losses

    def optimizer_step(self, loss: torch.Tensor, model: torch.nn.Module,
                       optimizer: torch.optim.Optimizer) -> None:
        """Backward, nan_to_num on gradients (EDM), clip to max_grad_norm, AdamW step."""
        optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        for parameter in model.parameters():
            if parameter.grad is not None:
                torch.nan_to_num(parameter.grad, nan=0.0, posinf=1e5, neginf=-1e5,
                                 out=parameter.grad)
        self.accelerator.clip_grad_norm_(model.parameters(), self.config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        """One generator update, then critic_ratio critic updates; during the critic warm-up
        (a critic that starts at the teacher while the student does not) the critic alone."""
        warming_up = step < self.config.critic_warmup_steps
        if warming_up:  # critic updates draw their own student samples
            losses, x0, text, conditioning = {}, None, None, None
        else:
            losses, x0, text, conditioning = self.generator_update(step)
            if self.ema is not None:
                self.ema.update(self.accelerator.unwrap_model(self.student))
        for repeat in range(self.config.critic_ratio):
            critic_losses = self.critic_update(step, repeat, x0, text, conditioning)
            if repeat == 0:
                losses.update(critic_losses)
        self.last_lr = float(self.generator_lr.get_last_lr()[0])  # the LR this step used
        if not warming_up:  # the generator's LR warm-up starts with its first update
            self.generator_lr.step()
        self.critic_lr.step()
        return losses

    # -- the loop ----------------------------------------------------------------------------
    def request_stop(self, signum=None, frame=None) -> None:
        """SIGINT/SIGTERM: finish the current step, save a checkpoint, exit 0."""
        self.stop_requested = True

    def should_stop(self) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.stop_requested = True
        if self.world == 1:  # no device round trip (a host sync every step on a GPU)
            return self.stop_requested
        flag = torch.tensor([1.0 if self.stop_requested else 0.0], device=self.device)
        if self.world > 1:
            flag = self.accelerator.reduce(flag, reduction="sum")
        return bool(flag.item() > 0)

    def train(self, max_seconds: float | None = None) -> int:
        """Run (or resume) to config.steps, or until max_seconds have passed (then stop as on
        SIGTERM: checkpoint and student/); returns the last completed step."""
        config, accelerator, run = self.config, self.accelerator, self.run
        self.deadline = time.monotonic() + max_seconds if max_seconds else None
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                handlers[signum] = signal.signal(signum, self.request_stop)
        try:
            return self.train_loop(config, accelerator, run)
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)

    def train_loop(self, config: DistillConfig, accelerator, run: RunFolder) -> int:
        # 1. run folder, resume point
        start_step = 0
        if accelerator.is_main_process:
            run.create()
            ckpt.remove_partial(run.checkpoints_dir)
            config.save(run.config_path)
        accelerator.wait_for_everyone()
        latest = ckpt.latest_checkpoint(run.checkpoints_dir)
        if latest is not None:
            start_step = ckpt.load_checkpoint(accelerator, latest[1])
            if accelerator.is_main_process:
                run.truncate_metrics(start_step)
        # 2. cached inputs: regression pairs, real latents; the teacher's grid
        self.prepare_assets()
        teacher_png = run.samples_dir / "teacher.png"
        if config.sample_every and accelerator.is_main_process and not teacher_png.is_file():
            teacher_grid(self, teacher_png)
        fixed_prompts = sample_prompts(self.prompts, config.sample_count)
        if start_step == 0 and config.sample_every:
            self.write_samples(0, fixed_prompts)
        # 3. steps (the stop flag is agreed on by all ranks after every step)
        step, saved_step = start_step, (start_step if latest is not None else None)
        last_log_time, last_log_step = time.perf_counter(), start_step
        stopping = self.should_stop()
        while step < config.steps and not stopping:
            losses = self.train_step(step)
            step += 1
            if step % config.log_every == 0 or step == config.steps:
                now = time.perf_counter()
                it_s = (step - last_log_step) / max(now - last_log_time, 1e-9)
                last_log_time, last_log_step = now, step
                self.log(step, losses, it_s)
            stopping = self.should_stop()
            if config.sample_every and step % config.sample_every == 0:
                self.write_samples(step, fixed_prompts)
            if step % config.checkpoint_every == 0 or step == config.steps or stopping:
                self.save(step, fixed_prompts)
                saved_step = step
        # 4. a stop before any step of this process still leaves a checkpoint and student/
        if saved_step != step:
            self.save(step, fixed_prompts)
        self.reporter.done(step, config.steps, str(run.student_dir), stopping)
        accelerator.wait_for_everyone()
        return step

    def log(self, step: int, losses: dict[str, torch.Tensor], it_s: float) -> None:
        values = {}
        for name, value in losses.items():
            value = value.detach().float().reshape(1)
            if self.world > 1:
                value = self.accelerator.reduce(value, reduction="mean")
            values[name] = float(value.item())
        lr = self.last_lr
        eta = (self.config.steps - step) / it_s if it_s > 0 else float("inf")
        if self.accelerator.is_main_process:
            self.run.append_metrics({"step": step, "losses": values, "lr": lr,
                                     "it_s": round(it_s, 4), "eta_s": round(eta, 1)})
        self.reporter.progress(step, self.config.steps, values, lr, it_s, eta)

    def averaged_student(self):
        """A block in which the student holds its EMA weights (none without --ema-decay)."""
        if self.ema is None:
            return nullcontext()
        return self.ema.applied(self.accelerator.unwrap_model(self.student))

    def write_samples(self, step: int, fixed_prompts: list[str]) -> Path:
        path = self.run.sample_path(step)
        with self.averaged_student():
            sample_grid(self, fixed_prompts, path)  # every rank samples; main writes
        if self.accelerator.is_main_process:
            self.reporter.sample(step, str(path))
        return path

    def save(self, step: int, fixed_prompts: list[str]) -> None:
        """Checkpoint (atomic, last K kept), then refresh student/ (atomic)."""
        folder = ckpt.save_checkpoint(self.accelerator, self.run.checkpoints_dir, step,
                                      self.config.keep_checkpoints)
        student_json = {
            "timesteps": self.timesteps,
            "edit_timesteps": student_timesteps(4, self.schedule.num_train_timesteps),
            "teacher": self.config.teacher, "method": self.config.method,
            "training_steps": step, "config": self.config.to_dict(), "metrics": {},
        }
        with self.averaged_student():
            export_student_folder(self, student_json)
        if self.accelerator.is_main_process:
            self.reporter.checkpoint(step, str(folder), str(self.run.student_dir))
