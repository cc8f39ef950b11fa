"""Control models: a ControlNet (Zhang et al. 2023) or a T2I-Adapter (Mou et al. 2023) that
steers the UNet with a control image (a scribble, line art or canny edges).

A ControlNet runs at every UNet call it is active for: a copy of the UNet's encoder reads
the noisy latent, the timestep, the text and the embedded control image, and adds zero-conv
residuals to the UNet's skip connections and middle block. Its control-image embedding
depends on the image alone, so the generator computes it once per image and keeps it. A
T2I-Adapter's feature pyramid depends on the image alone too: computed once per image, it is
added inside the UNet's down blocks at every step.

A control model is a diffusers folder (config.json + weights) or a ControlNet file in the
original release layout (engine/runtime/control_file.py), with an optional control.json
{"type": "scribble" | "lineart" | "canny"} naming the preprocessing it was trained on (in the
folder, or beside the file); without one the type comes from the folder's or file's name,
else scribble.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from engine.api import ModelLoadError
from engine.runtime.control_file import is_control_file, load_controlnet_file
from engine.runtime.loading import load_component, read_json

log = logging.getLogger(__name__)

CONTROL_TYPES = ("scribble", "lineart", "canny")
CONTROL_FILE = "control.json"  # {"type": one of CONTROL_TYPES}
CONTROL_CLASSES = {"ControlNetModel": "controlnet", "T2IAdapter": "t2i-adapter"}
# Folder-name words that say which preprocessing a control model wants, checked in order.
TYPE_WORDS = (("canny", "canny"), ("lineart", "lineart"), ("line_art", "lineart"),
              ("line-art", "lineart"), ("scribble", "scribble"), ("sketch", "scribble"))


@dataclass(frozen=True)
class ControlResiduals:
    """What a control model adds to one UNet call: a ControlNet's skip-connection residuals
    followed by its middle-block residual, or a T2I-Adapter's per-block features."""

    tensors: tuple[torch.Tensor, ...]
    intrablock: bool  # True: T2I-Adapter features (added inside the down blocks)


def guess_control_type(path: Path) -> str:
    """control.json's "type" (in the folder, or beside the file), else a type word in the
    folder's or file's name, else scribble."""
    settings_path = (path.parent if path.is_file() else path) / CONTROL_FILE
    if settings_path.is_file():
        control_type = read_json(settings_path).get("type")
        if control_type not in CONTROL_TYPES:
            raise ModelLoadError(f"{settings_path} names the control type {control_type!r}; "
                                 f"use one of {', '.join(CONTROL_TYPES)}.")
        return control_type
    resolved = path.resolve()
    name = (resolved.stem if path.is_file() else resolved.name).lower()
    return next((kind for word, kind in TYPE_WORDS if word in name), "scribble")


def control_path(path: str | Path) -> Path:
    """The control model's folder (checked to hold a config.json) or ControlNet file (checked
    to have a checkpoint suffix), checked to exist."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"The control model {path} does not exist.")
    if not is_control_file(path) and not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} is not a control model (a diffusers ControlNet or "
                             "T2I-Adapter folder with config.json, or a ControlNet "
                             ".safetensors / .pth file).")
    return path


def check_fits(kind: str, config, unet_config, folder: Path) -> None:
    """Refuse, in one sentence, a control model made for another base architecture."""
    if kind == "controlnet":
        width, unet_width = config.cross_attention_dim, unet_config.cross_attention_dim
        if width != unet_width:
            raise ModelLoadError(f"The ControlNet in {folder} expects {width}-d text states but "
                                 f"the model's UNet uses {unet_width}-d; it was made for "
                                 "another base model.")
        same = (tuple(config.block_out_channels) == tuple(unet_config.block_out_channels)
                and config.in_channels <= unet_config.in_channels
                and config.get("addition_embed_type") == unet_config.addition_embed_type)
    else:
        if config.adapter_type == "full_adapter_xl" and len(config.channels) > 2:
            raise ModelLoadError(f"The T2I-Adapter in {folder} is an SDXL one; SDXL "
                                 "T2I-Adapters are not supported yet (SDXL ControlNets are).")
        same = list(config.channels) == list(unet_config.block_out_channels)
    if not same:
        raise ModelLoadError(f"The {'ControlNet' if kind == 'controlnet' else 'T2I-Adapter'} "
                             f"in {folder} does not fit the model's UNet (block widths "
                             f"{unet_config.block_out_channels}); it was made for another "
                             "base model.")


class ControlModel:
    """A loaded ControlNet or T2I-Adapter on a torch backend's device and dtype."""

    def __init__(self, network: torch.nn.Module, kind: str, control_type: str, path: Path,
                 backend):
        self.network = network
        self.kind = kind  # "controlnet" or "t2i-adapter"
        self.control_type = control_type  # one of CONTROL_TYPES
        self.path = path
        self.device, self.dtype = backend.device, backend.dtype
        self.uses_pooled_text = backend.parts.uses_pooled_text
        self.time_ids = backend.parts.time_ids  # SDXL's size conditioning, else None
        config = network.config
        self.input_channels = int(config.conditioning_channels if kind == "controlnet"
                                  else config.in_channels)
        self.bgr = kind == "controlnet" and config.controlnet_conditioning_channel_order == "bgr"
        self._branch = partial(controlnet_branch, network, self.uses_pooled_text)
        self._embed = network.controlnet_cond_embedding if kind == "controlnet" else network
        graph_pool = getattr(backend, "graph_pool", None)
        if graph_pool is not None and kind == "controlnet":
            from engine.runtime.cuda_graphs import GraphedCall

            self._branch = GraphedCall(self._branch, "the control branch", graph_pool)

    @property
    def name(self) -> str:
        return str(self.path)

    @torch.inference_mode()
    def embed(self, control_image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """A control image (1, C, H, W) in [0, 1] -> what every step reuses: a ControlNet's
        conditioning embedding, or a T2I-Adapter's whole feature pyramid."""
        image = control_image.to(self.device, self.dtype)
        if self.bgr:
            image = image.flip(1)
        if self.input_channels == 1 and image.shape[1] == 3:
            image = image.mean(dim=1, keepdim=True)
        if self.kind == "controlnet":
            return (self._embed(image),)
        return tuple(self._embed(image))

    @torch.inference_mode()
    def residuals(self, embedded: tuple[torch.Tensor, ...], x_t: torch.Tensor,
                  t: torch.Tensor, token_states: torch.Tensor, pooled: torch.Tensor | None,
                  scale: float) -> ControlResiduals:
        """The residuals of one UNet call at batch x_t.shape[0], multiplied by scale."""
        batch = x_t.shape[0]
        if self.kind == "t2i-adapter":
            return ControlResiduals(tuple(feature.expand(batch, -1, -1, -1) * scale
                                          for feature in embedded), True)
        extra = (pooled.to(self.device, self.dtype),) if self.uses_pooled_text else ()
        if self.time_ids is not None:
            extra += (self.time_ids.to(self.device, self.dtype),)
        outputs = self._branch(x_t.to(self.device, self.dtype), t.to(self.device),
                               token_states.to(self.device, self.dtype),
                               embedded[0].expand(batch, -1, -1, -1), *extra)
        return ControlResiduals(tuple(output * scale for output in outputs), False)


def controlnet_branch(network, uses_pooled_text: bool, x_t: torch.Tensor, t: torch.Tensor,
                      token_states: torch.Tensor, embedding: torch.Tensor,
                      *text_extra: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A ControlNet's forward (Zhang et al. 2023, fig. 3) from an already embedded control
    image: the skip residuals then the middle residual, all tensors (CUDA-graph friendly).
    text_extra: the pooled text when the model takes it, then SDXL's size time ids."""
    t_embedding = network.time_embedding(network.time_proj(t).to(x_t.dtype))
    if network.class_embedding is not None and uses_pooled_text:
        t_embedding = t_embedding + network.class_embedding(text_extra[0]).to(x_t.dtype)
    if network.config.addition_embed_type == "text_time":  # SDXL: pooled text + size ids
        pooled, time_ids = text_extra
        size_embedding = network.add_time_proj(time_ids.flatten()).reshape(1, -1)
        added = torch.cat([pooled, size_embedding.to(pooled.dtype).expand(x_t.shape[0], -1)],
                          dim=-1)
        t_embedding = t_embedding + network.add_embedding(added.to(x_t.dtype))
    sample = network.conv_in(x_t) + embedding
    skips = [sample]
    for block in network.down_blocks:
        if getattr(block, "has_cross_attention", False):
            sample, block_skips = block(hidden_states=sample, temb=t_embedding,
                                        encoder_hidden_states=token_states)
        else:
            sample, block_skips = block(hidden_states=sample, temb=t_embedding)
        skips.extend(block_skips)
    if network.mid_block is not None:
        if getattr(network.mid_block, "has_cross_attention", False):
            sample = network.mid_block(sample, t_embedding, encoder_hidden_states=token_states)
        else:
            sample = network.mid_block(sample, t_embedding)
    outputs = [zero_conv(skip) for skip, zero_conv in zip(skips, network.controlnet_down_blocks,
                                                           strict=True)]
    outputs.append(network.controlnet_mid_block(sample))
    if network.config.global_pool_conditions:
        outputs = [output.mean(dim=(2, 3), keepdim=True) for output in outputs]
    return tuple(outputs)


def load_control(path: str | Path, backend, control_type: str | None = None) -> ControlModel:
    """Load a ControlNet or T2I-Adapter folder, or a ControlNet file, onto a torch backend,
    checked against its UNet; control_type overrides control.json / the folder's name."""
    from diffusers import ControlNetModel, T2IAdapter

    if getattr(backend, "parts", None) is None:
        raise ModelLoadError("Control models run on the PyTorch backend; load the model with "
                             "--backend torch.")
    if control_type is not None and control_type not in CONTROL_TYPES:
        raise ModelLoadError(f"Unknown control type {control_type!r}; use one of "
                             f"{', '.join(CONTROL_TYPES)}.")
    folder = control_path(path)
    unet_config = backend.parts.unet.config
    if is_control_file(folder):
        kind = "controlnet"
        network = load_controlnet_file(folder, unet_config, backend.dtype)
    else:
        class_name = read_json(folder / "config.json").get("_class_name")
        if class_name not in CONTROL_CLASSES:
            raise ModelLoadError(f"{folder} holds a {class_name or 'model of unknown class'}, "
                                 "not a ControlNetModel or T2IAdapter.")
        kind = CONTROL_CLASSES[class_name]
        model_class = ControlNetModel if kind == "controlnet" else T2IAdapter
        network = load_component(model_class, folder, backend.dtype)
    check_fits(kind, network.config, unet_config, folder)
    network = network.to(backend.device).eval().requires_grad_(False)
    if backend.device.startswith("cuda"):
        network.to(memory_format=torch.channels_last)
    control_type = control_type or guess_control_type(folder)
    log.info("Control model %s loaded (%s, %s preprocessing).", folder, kind, control_type)
    return ControlModel(network, kind, control_type, folder, backend)
