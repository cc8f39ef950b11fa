"""Turns a GenerateRequest into an image over any backend: validation, caches, timings."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from engine.api import (
    EngineError,
    GenerateRequest,
    GenerationInterrupted,
    InvalidRequestError,
    LoraChoice,
    StageTimings,
)
from engine.diffusion.guidance import cfg_x0
from engine.diffusion.sampling import (
    ddim_sample,
    edit_start,
    gaussian_blur,
    multistep_sample,
    teacher_start,
)
from engine.diffusion.schedule import ddim_timesteps, student_timesteps, timestep_tensor
from engine.pipeline.cache import LruCache
from engine.pipeline.control import ControlPlan, controlled_unet
from engine.pipeline.control_image import control_map, control_tensor
from engine.pipeline.images import (
    image_key,
    image_to_tensor,
    resized,
    tensor_to_image,
    to_rgb_array,
)
from engine.pipeline.masking import composite, keep_outside, mask_weights
from engine.pipeline.vocabulary import Match, PromptVocabulary, load_vocabulary
from engine.runtime.loading import read_prompt_suggestions
from engine.runtime.text import TextEmbedding
from engine.untrusted import MAX_PROMPT_CHARS, check_request, clean_prompt


def interruptible(x0_fn, interrupt: Callable[[], bool] | None):
    """x0_fn that first asks interrupt() and raises GenerationInterrupted when it says so."""
    if interrupt is None:
        return x0_fn

    def checked(x_t: torch.Tensor, t: int) -> torch.Tensor:
        if interrupt():
            raise GenerationInterrupted
        return x0_fn(x_t, t)

    return checked


class Generator:
    """One model on one backend; generate() runs text -> UNet step(s) -> decode."""

    def __init__(self, backend, teacher_backend: Callable[[], object] | None = None,
                 text_cache_size: int = 256, latent_cache_size: int = 16, control=None):
        """teacher_backend() loads a student's teacher for teacher_steps requests (default:
        the backend's own load_teacher; None when it has none); control: a loaded control
        model (engine.runtime.control.ControlModel) for requests with a control_image."""
        self.backend = backend
        self.control = control
        # control image content -> what its control model reuses at every step and frame
        self.control_cache = LruCache(8)
        self.control_cache_hits = self.control_cache_misses = 0
        self.load_teacher = teacher_backend or getattr(backend, "load_teacher", None)
        self.schedule = backend.schedule
        self.text_cache = LruCache(text_cache_size)
        self.latent_cache = LruCache(latent_cache_size)
        self.first_step_cache = LruCache(4)  # (prompt, seed, sketch, t) -> first student x0
        self.match_cache = LruCache(text_cache_size)  # typed prompt -> its vocabulary Match
        config = backend.student_config
        top = self.schedule.num_train_timesteps
        self.default_timesteps = list(config.get("timesteps") or student_timesteps(1, top))
        self.edit_timesteps = list(config.get("edit_timesteps") or student_timesteps(4, top))
        # student.json "one_step_smoothing": latent blur sigma of the one-step frame from noise
        self.one_step_smoothing = float(config.get("one_step_smoothing") or 0.0)
        self._teacher: Generator | None = None
        self._prompt_suggestions: list[str] | None = None
        self._vocabulary: PromptVocabulary | None | bool = False  # False: not read yet

    def clear_caches(self) -> None:
        """Forget text embeddings, matches and first steps (benchmarks time the work, not the
        caches)."""
        self.text_cache.entries.clear()
        self.match_cache.entries.clear()
        self.first_step_cache.entries.clear()
        self.control_cache.entries.clear()

    @property
    def loras(self) -> tuple[LoraChoice, ...]:
        """The LoRAs fused into the model now, with their files' digests."""
        return tuple(getattr(self.backend, "loras", ()))

    @property
    def decoder(self) -> str:
        """The fast decoder folder that decodes frames, "" for the model's own VAE."""
        return str(getattr(self.backend, "decoder", ""))

    def set_loras(self, choices: list[LoraChoice]) -> tuple[LoraChoice, ...]:
        """Fuse these LoRAs into the model ([] removes them all); the frames after this one
        use them at no extra cost. Not thread-safe: the service calls it between frames."""
        if not hasattr(self.backend, "set_loras"):
            if not choices:
                return ()
            raise EngineError("LoRAs run on the PyTorch backend; choose PyTorch or Automatic "
                              "and load the model again.")
        applied = self.backend.set_loras(list(choices))
        self.clear_caches()  # text states and first steps came from the old weights
        return applied

    def set_decoder(self, folder: str | None) -> None:
        """Decode frames with a fast autoencoder folder (TAESD-style), or the VAE (None)."""
        if not hasattr(self.backend, "set_decoder"):
            if not folder:
                return
            raise EngineError("A fast decoder runs on the PyTorch backend; choose PyTorch or "
                              "Automatic and load the model again.")
        self.backend.set_decoder(folder)

    @property
    def default_steps(self) -> int:
        """The step count the student was distilled for (student.json "timesteps"): the
        count a caller that does not choose should use."""
        return len(self.default_timesteps)

    @property
    def prompt_suggestions(self) -> list[str]:
        """Prompts the model folder suggests (prompts.txt), [] without one."""
        if self._prompt_suggestions is None:
            folder = getattr(self.backend, "model_dir", None)
            self._prompt_suggestions = read_prompt_suggestions(folder) if folder else []
        return self._prompt_suggestions

    @property
    def vocabulary(self) -> PromptVocabulary | None:
        """The model folder's vocabulary (engine.pipeline.vocabulary), None without one."""
        if self._vocabulary is False:
            self._vocabulary = load_vocabulary(getattr(self.backend, "model_dir", None))
        return self._vocabulary

    def drawn_as(self, request: GenerateRequest) -> Match | None:
        """The training prompt a request's prompt is drawn as; None: drawn as typed. Worked
        out once per prompt: generate and the service that reports it both ask."""
        if not request.match_prompt or self.vocabulary is None:
            return None
        cached = self.match_cache.get(request.prompt)
        if cached is None:
            match = self.vocabulary.match(request.prompt,
                                          self.encode_prompt(request.prompt).pooled)
            cached = (match,)  # a 1-tuple, so that "drawn as typed" (None) is cached too
            self.match_cache.put(request.prompt, cached)
        return cached[0]

    @property
    def control_info(self) -> tuple[str, str] | None:
        """(folder, preprocessing type) of the loaded control model; None without one."""
        return None if self.control is None else (self.control.name, self.control.control_type)

    @property
    def is_student(self) -> bool:
        return bool(self.backend.student_config)

    def teacher(self) -> Generator:
        """The student's teacher (student.json "teacher"), loaded on first use for compare."""
        if not self.is_student:
            return self
        if self._teacher is None:
            if self.load_teacher is None:
                raise InvalidRequestError("This student was loaded without a way to load its "
                                          "teacher.")
            self._teacher = Generator(self.load_teacher())
            self._teacher.text_cache = self.text_cache
        return self._teacher

    def timesteps_for(self, steps: int) -> list[int]:
        if steps == len(self.default_timesteps):
            return self.default_timesteps
        if steps == len(self.edit_timesteps):
            return self.edit_timesteps
        return student_timesteps(steps, self.schedule.num_train_timesteps)

    # -- stages ----------------------------------------------------------------------------
    def encode_prompt(self, prompt: str) -> TextEmbedding:
        cached = self.text_cache.get(prompt)
        if cached is None:
            cached = self.backend.encode_text([prompt])
            self.text_cache.put(prompt, cached)
        return cached

    def encode_image(self, image: np.ndarray, what: str) -> tuple[torch.Tensor, str]:
        """(latent, content key): the latent is cached by the image's content hash."""
        image = to_rgb_array(image, what)
        key = image_key(image)
        cached = self.latent_cache.get(key)
        if cached is None:
            cached = self.backend.encode_image(image_to_tensor(image, self.backend.image_size))
            self.latent_cache.put(key, cached)
        return cached, key

    def noise_source(self, seed: int):
        """Seeded CPU noise: the same (seed, shape) gives the same image on every device."""
        generator = torch.Generator("cpu").manual_seed(int(seed) % (2**63))

        def noise(shape: tuple[int, ...]) -> torch.Tensor:
            return torch.randn(shape, generator=generator)

        return noise

    def prepare_control(self, request: GenerateRequest) -> ControlPlan | None:
        """The request's control image preprocessed and embedded by the control model, cached
        by the image's content (a prompt edit reuses it, a stroke recomputes it); None without
        a control image or at control strength 0 (exactly the frame without control)."""
        if request.control_image is None or float(request.control_strength) == 0.0:
            return None
        if self.control is None:
            raise InvalidRequestError("A control image needs a control model; load one "
                                      "(ControlNet or T2I-Adapter) first.")
        image = to_rgb_array(request.control_image, "control image")
        key = (image_key(image), self.control.control_type)
        embedded = self.control_cache.get(key)
        if embedded is None:
            self.control_cache_misses += 1
            control = control_map(resized(image, self.backend.image_size),
                                  self.control.control_type)
            embedded = self.control.embed(control_tensor(control))
            self.control_cache.put(key, embedded)
        else:
            self.control_cache_hits += 1
        return ControlPlan(embedded, key, float(request.control_strength),
                           float(request.control_start), float(request.control_end))

    def x0_function(self, text: TextEmbedding, conditioning, uncond: TextEmbedding | None = None,
                    guidance: float = 1.0, control: ControlPlan | None = None):
        """Denoiser returning x0; with uncond, classifier-free guidance (Ho & Salimans 2022)."""
        schedule = self.schedule
        unet = controlled_unet(self.backend, self.control, control)
        both = None if uncond is None else TextEmbedding.cat([uncond, text])
        cond_in = None if conditioning is None else torch.cat([conditioning, conditioning])

        def doubled(x_in: torch.Tensor, t_in: torch.Tensor) -> torch.Tensor:
            return unet(x_in, t_in, both, cond_in)

        def x0_fn(x_t: torch.Tensor, t: int) -> torch.Tensor:
            t_batch = timestep_tensor(t, x_t.shape[0])
            if uncond is None:
                output = unet(x_t, t_batch, text, conditioning)
                return schedule.to_x0(output, x_t.to(output.device), t_batch)
            return cfg_x0(doubled, schedule, x_t, t_batch, guidance)

        return x0_fn

    # -- the whole request -------------------------------------------------------------------
    def generate(self, request: GenerateRequest, interrupt: Callable[[], bool] | None = None,
                 full_decoder: bool = False) -> tuple[np.ndarray, StageTimings]:
        """Run one request; returns the HxWx3 uint8 image and per-stage timings. interrupt()
        is asked before every UNet call; True raises GenerationInterrupted. full_decoder:
        decode with the model's own VAE even when a fast decoder draws the frames."""
        check_request(request)
        if len(request.prompt) > MAX_PROMPT_CHARS:  # cut before the tokenizer sees it
            request = replace(request, prompt=clean_prompt(request.prompt))
        if request.teacher_steps and self.is_student:
            return self.teacher().generate(request, interrupt, full_decoder)
        backend, sync = self.backend, self.backend.synchronize
        start = time.perf_counter()
        match = self.drawn_as(request)
        if match is not None:  # every cache below is keyed by what is drawn
            request = replace(request, prompt=match.prompt)
        text = self.encode_prompt(request.prompt)
        uncond = self.encode_prompt("") if request.teacher_steps else None
        sync()
        text_done = time.perf_counter()

        strength = float(request.strength)
        init_image = request.image_to_edit(bool(backend.conditioning_channels))
        conditioning = sketch_key = None
        if request.sketch is not None and backend.conditioning_channels:
            conditioning, sketch_key = self.encode_image(request.sketch, "sketch")
        init_latent = keep_weights = kept = None
        if request.mask is not None:
            if init_image is None:
                raise InvalidRequestError("A mask needs an image to edit (an init image).")
            keep_weights = mask_weights(request.mask)
            kept = resized(to_rgb_array(init_image, "init image"), backend.image_size)
            if not keep_weights.any():  # an empty mask redraws nothing: the image itself
                return kept.copy(), StageTimings(total_ms=(time.perf_counter() - start) * 1e3)
        if init_image is not None and (strength < 1.0 or keep_weights is not None):
            init_latent, _ = self.encode_image(init_image, "init image")
        control = self.prepare_control(request)
        sync()
        encode_done = time.perf_counter()

        latents = self.sample_latents(request, text, uncond, (conditioning, sketch_key),
                                      init_latent, strength, interrupt, keep_weights, control)
        sync()
        unet_done = time.perf_counter()
        decode = backend.decode_full if full_decoder and self.decoder else backend.decode
        image = tensor_to_image(decode(latents))
        if kept is not None:  # the kept region: the image's own pixels
            image = composite(image, kept, keep_weights)
        end = time.perf_counter()
        timings = StageTimings(
            text_ms=(text_done - start) * 1e3,
            encode_ms=(encode_done - text_done) * 1e3,
            unet_ms=(unet_done - encode_done) * 1e3,
            decode_ms=(end - unet_done) * 1e3,
            total_ms=(end - start) * 1e3,
        )
        return image, timings

    def sample_latents(self, request, text, uncond, sketch, init_latent, strength,
                       interrupt=None, keep_weights=None, control: ControlPlan | None = None):
        """sketch: (conditioning latent or None, its content key or None); keep_weights (HxW,
        1 redraws, 0 keeps init_latent) make it a masked edit; control: prepare_control's.
        Runs the teacher, an edit of init_latent or the student from noise."""
        conditioning, sketch_key = sketch
        noise = self.noise_source(request.seed)
        shape = (1, self.backend.latent_channels, self.backend.latent_size,
                 self.backend.latent_size)
        x_start = noise(shape)
        if request.teacher_steps:
            x0_fn = self.x0_function(text, conditioning, uncond, float(request.guidance),
                                     control)
        else:
            x0_fn = self.x0_function(text, conditioning, control=control)
        x0_fn = interruptible(x0_fn, interrupt)
        if keep_weights is not None:
            x0_fn = keep_outside(x0_fn, init_latent, keep_weights)
        if request.teacher_steps:
            return self.teacher_latents(x0_fn, x_start, int(request.teacher_steps),
                                        init_latent, strength)
        timesteps = self.timesteps_for(int(request.steps))
        if init_latent is not None:
            if keep_weights is None or strength < 1.0:  # else from noise inside the mask,
                timesteps = edit_start(self.edit_timesteps, strength,  # in the student's steps
                                       self.schedule.num_train_timesteps)
            return self.edit_latents(x0_fn, x_start, noise, init_latent, timesteps)
        key = (request.prompt, int(request.seed), sketch_key, int(timesteps[0]),
               None if control is None else control.cache_key)
        return self.student_latents(x0_fn, x_start, noise, timesteps, key)

    def teacher_latents(self, x0_fn, x_start, steps, init_latent, strength):
        """N-step DDIM (Song et al. 2021) from noise, or from init_latent noised to the
        strength's step (SDEdit, Meng et al. 2022)."""
        timesteps = ddim_timesteps(steps, self.schedule.num_train_timesteps)
        if init_latent is not None:
            timesteps = timesteps[teacher_start(len(timesteps), strength):]
            if not timesteps:
                return init_latent
            x_start = self.schedule.add_noise(init_latent.cpu(), x_start,
                                              torch.tensor([timesteps[0]]))
        return ddim_sample(x0_fn, x_start, timesteps, self.schedule)

    def edit_latents(self, x0_fn, x_start, noise, init_latent, timesteps):
        """The student's edit (SDEdit, Meng et al. 2022): init_latent noised to timesteps[0],
        then its few-step sampler (DMD2 sec. 4.5) over timesteps; none: init_latent."""
        if not timesteps:
            return init_latent
        x_start = self.schedule.add_noise(init_latent.cpu(), x_start,
                                          torch.tensor([timesteps[0]]))
        return multistep_sample(x0_fn, x_start, timesteps, self.schedule, noise)

    def student_latents(self, x0_fn, x_start, noise, timesteps, key):
        """The student from pure noise. Its first step depends only on prompt, seed, sketch
        and t (key), so a live preview's one-step x0 is the first step of the full frame that
        refines it; a one-step frame gets the student's latent blur."""
        first_x0 = self.first_step_cache.get(key)
        if first_x0 is None:
            first_x0 = x0_fn(x_start, timesteps[0])
            self.first_step_cache.put(key, first_x0)
        if len(timesteps) == 1:  # the refinement's next step starts from the unsmoothed x0
            return gaussian_blur(first_x0, self.one_step_smoothing)
        return multistep_sample(x0_fn, x_start, timesteps, self.schedule, noise, first_x0)
