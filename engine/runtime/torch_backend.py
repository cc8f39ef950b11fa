"""PyTorch backend: CPU fp32, or CUDA with fp16 weights, channels_last, SDPA attention and each
stage replayed from CUDA graphs (engine/runtime/cuda_graphs.py)."""

from __future__ import annotations

import re
from functools import partial

import torch

from engine.api import EngineError, LoraChoice, ModelOptions
from engine.runtime.cuda_graphs import GraphedCall, graphs_wanted, new_memory_pool
from engine.runtime.decoder import load_fast_decoder
from engine.runtime.loading import PipelineParts, encode_latents, load_pipeline
from engine.runtime.lora import LoraFuser, applied_choices, lora_components, read_choices
from engine.runtime.sdxl import pooled_text_kwargs
from engine.runtime.text import TextEmbedding

TORCH_DEVICE_PATTERN = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def mps_available() -> bool:
    """Whether PyTorch can run on Apple's GPU (Metal Performance Shaders)."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(device: str = "auto") -> str:
    """auto -> cuda when PyTorch sees an NVIDIA (or ROCm) GPU, else mps on Apple silicon, else
    cpu; cpu, cuda, cuda:N and mps are checked. (MPS is untested on hardware here.)"""
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if mps_available() else "cpu"
    if not TORCH_DEVICE_PATTERN.match(device):
        raise EngineError(f"Unknown device {device!r} for torch; use auto, cpu, cuda or mps "
                          "(tensorrt, directml, coreml and openvino run with --backend onnx).")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError("CUDA was requested but PyTorch sees no CUDA device; install a CUDA "
                          "build of torch (pytorch.org/get-started) or use --device cpu.")
    if device == "mps" and not mps_available():
        raise EngineError("MPS was requested but PyTorch sees no Apple GPU; it needs macOS 12.3+ "
                          "on Apple silicon, or use --device cpu.")
    return device


class TorchBackend:
    """Runs the stages of a loaded pipeline with PyTorch."""

    name = "torch"
    notice = ""  # why it runs instead of the backend asked for (create_backend's fallback)
    loras: tuple[LoraChoice, ...] = ()  # fused now (set_loras), with their files' digests
    decoder = ""  # the fast decoder folder that decodes frames (set_decoder), "" for the VAE

    def __init__(self, parts: PipelineParts, device: str, cuda_graphs: bool = True):
        self.parts = parts
        self.device = device
        self.dtype = next(parts.unet.parameters()).dtype
        self.image_size = parts.image_size
        self.latent_size = parts.latent_size
        self.latent_channels = parts.latent_channels
        self.conditioning_channels = parts.conditioning_channels
        self.schedule = parts.schedule
        self.student_config = parts.student_config
        self.model_dir = parts.model_dir
        if device.startswith("cuda"):
            torch.backends.cudnn.benchmark = True  # live shapes repeat: time cuDNN's kernels once
            parts.unet.to(memory_format=torch.channels_last)
            parts.vae.to(memory_format=torch.channels_last)
        self.cuda_graphs = cuda_graphs and graphs_wanted(device)
        # Stage functions over the parts, not bound methods: no reference cycle keeps a
        # swapped-out model's weights and graph memory on the GPU until a full collection.
        self._unet_call = partial(unet_forward, parts)
        self._decode_call = self._full_decode_call = partial(decode_forward, parts)
        self._clip_text_call = None  # CLIP has no attention mask, so its graph never branches
        # the UNet with a control model's residuals (see unet()), graphed like the plain one
        self._controlled_unet_calls = {kind: partial(controlled_unet_forward, parts, kind)
                                       for kind in (False, True)}
        self._lora_fuser: LoraFuser | None = None
        self.graph_pool = None  # the memory pool of this backend's CUDA graphs
        if self.cuda_graphs:
            self.graph_pool = pool = new_memory_pool()
            self._unet_call = GraphedCall(self._unet_call, "the UNet", pool)
            self._controlled_unet_calls = {
                kind: GraphedCall(call, "the UNet with a T2I-Adapter" if kind else
                                  "the UNet with a ControlNet", pool)
                for kind, call in self._controlled_unet_calls.items()}
            self._decode_call = self._full_decode_call = GraphedCall(self._decode_call,
                                                                     "the decoder", pool)
            if parts.text_encoder.is_clip:
                self._clip_text_call = GraphedCall(parts.text_encoder.encode_ids,
                                                   "the text encoder", pool)

    def load_teacher(self):
        """The student's teacher (student.json "teacher") on this runtime and device."""
        from engine.runtime import load_teacher_backend

        return load_teacher_backend(self)

    @classmethod
    def load(cls, model: str, device: str = "auto", cuda_graphs: bool = True,
             options: ModelOptions | None = None) -> TorchBackend:
        """Load model (a folder, hub id or single-file checkpoint) with options on device."""
        device = pick_device(device)
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        return cls(load_pipeline(model, device=device, dtype=dtype, options=options), device,
                   cuda_graphs)

    def set_loras(self, choices: list[LoraChoice]) -> tuple[LoraChoice, ...]:
        """Fuse these LoRAs (replacing those fused before; [] restores the loaded weights
        exactly); returns them with their digests. A file that does not fit changes nothing."""
        files = read_choices(choices)
        if self._lora_fuser is None:
            self._lora_fuser = LoraFuser(lora_components(self.parts))
        self._lora_fuser.fuse(files)
        self.loras = applied_choices(files)
        return self.loras

    def set_decoder(self, folder: str | None) -> None:
        """Decode frames with a fast autoencoder folder (TAESD-style AutoencoderTiny), or
        with the model's own VAE again (None or "")."""
        if not folder:
            self._decode_call, self.decoder = self._full_decode_call, ""
            return
        vae, scale = load_fast_decoder(folder, self.latent_channels, self.device, self.dtype)
        if self.device.startswith("cuda"):
            vae.to(memory_format=torch.channels_last)
        call = partial(decode_with, vae, scale)
        if self.cuda_graphs:
            call = GraphedCall(call, "the fast decoder", self.graph_pool)
        self._decode_call, self.decoder = call, str(folder)

    @torch.inference_mode()
    def decode_full(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images with the model's own VAE, whatever decodes frames."""
        return self._full_decode_call(latents.to(self.device, self.dtype))

    def graphed_stages(self) -> list[str]:
        """The stages that replay from CUDA graphs (after a capture failed, not that one)."""
        calls = (self._clip_text_call, self._unet_call, self._decode_call,
                 *self._controlled_unet_calls.values())
        return [call.name for call in calls if isinstance(call, GraphedCall) and call.enabled]

    @torch.inference_mode()
    def encode_text(self, prompts: list[str]) -> TextEmbedding:
        encoder = self.parts.text_encoder
        if self._clip_text_call is None:
            return encoder.encode(prompts)
        token_ids = tuple(ids.to(self.device) for ids in encoder.token_ids(prompts))
        return encoder.embedding(prompts, *self._clip_text_call(*token_ids))

    @torch.inference_mode()
    def unet(self, x_t: torch.Tensor, t: torch.Tensor, text: TextEmbedding,
             conditioning: torch.Tensor | None, control=None) -> torch.Tensor:
        """control: a control model's ControlResiduals for this call (None: the plain UNet)."""
        x_in = x_t.to(self.device, self.dtype)
        if self.conditioning_channels:
            if conditioning is None:
                conditioning = torch.zeros(x_in.shape[0], self.conditioning_channels,
                                           *x_in.shape[2:])
            x_in = torch.cat([x_in, conditioning.to(x_in)], dim=1)
        pooled = (text.pooled.to(self.device, self.dtype),) if self.parts.uses_pooled_text else ()
        token_states = text.token_states.to(self.device, self.dtype)
        if control is None:
            return self._unet_call(x_in, t.to(self.device), token_states, *pooled)
        residuals = tuple(tensor.to(self.device, self.dtype) for tensor in control.tensors)
        return self._controlled_unet_calls[control.intrablock](
            x_in, t.to(self.device), token_states, *pooled, *residuals)

    @torch.inference_mode()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        latents = encode_latents(self.parts.vae, images.to(self.device, self.dtype))
        return latents * self.parts.latent_scale

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self._decode_call(latents.to(self.device, self.dtype))

    def warm_up(self) -> None:
        text = self.encode_text(["warm up"])
        size, channels = self.latent_size, self.latent_channels
        x_t = torch.zeros(1, channels, size, size, device=self.device)
        self.unet(x_t, torch.tensor([999]), text, None)
        self.decode(x_t)
        self.encode_image(torch.zeros(1, 3, self.image_size, self.image_size))
        self.synchronize()

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        elif self.device == "mps":
            torch.mps.synchronize()


def unet_forward(parts: PipelineParts, x_in: torch.Tensor, t: torch.Tensor,
                 token_states: torch.Tensor, *pooled: torch.Tensor) -> torch.Tensor:
    text_kwargs = pooled_text_kwargs(parts.unet, pooled[0] if pooled else None, parts.time_ids)
    return parts.unet(x_in, t, encoder_hidden_states=token_states, **text_kwargs).sample


def controlled_unet_forward(parts: PipelineParts, intrablock: bool, x_in: torch.Tensor,
                            t: torch.Tensor, token_states: torch.Tensor,
                            *extra: torch.Tensor) -> torch.Tensor:
    """unet_forward with a control model's residuals after the pooled text (when the UNet
    takes it): a T2I-Adapter's features (intrablock), or a ControlNet's skip residuals and
    then its middle residual."""
    pooled = extra[0] if parts.uses_pooled_text else None
    residuals = list(extra[1:] if parts.uses_pooled_text else extra)
    text_kwargs = pooled_text_kwargs(parts.unet, pooled, parts.time_ids)
    if intrablock:  # the UNet pops from this list, so it is a fresh one every call
        return parts.unet(x_in, t, encoder_hidden_states=token_states, **text_kwargs,
                          down_intrablock_additional_residuals=residuals).sample
    return parts.unet(x_in, t, encoder_hidden_states=token_states, **text_kwargs,
                      down_block_additional_residuals=tuple(residuals[:-1]),
                      mid_block_additional_residual=residuals[-1]).sample


def decode_forward(parts: PipelineParts, latents: torch.Tensor) -> torch.Tensor:
    return decode_with(parts.vae, parts.latent_scale, latents)


def decode_with(vae: torch.nn.Module, latent_scale: float, latents: torch.Tensor
                ) -> torch.Tensor:
    """Scaled latents -> images in [-1, 1] by an autoencoder whose scaling factor is
    latent_scale (1 for TAESD, which decodes SD-scaled latents as they are)."""
    return vae.decode(latents / latent_scale).sample.clamp(-1, 1)
