"""What the trainer needs from an instruction-editing flow model, and the shared pieces.

An :class:`EditModel` wraps one base model (FLUX.1 Kontext, Qwen-Image-Edit) as four
operations on *packed latent tokens* ``(B, N, C)``:

- :meth:`EditModel.encode_condition` — text embeddings of one instruction and the packed
  latents of its reference (input) image, computed once per prompt and reused;
- :meth:`EditModel.velocity` — the transformer's velocity ``v = ε − x0`` at flow time
  ``t`` (``x_t = (1 − t)·x0 + t·ε``), with the reference tokens appended as the pipeline
  does and the prediction sliced back to the target tokens;
- :meth:`EditModel.encode_images` / :meth:`EditModel.decode_tokens` — images ``(B, 3, H, W)``
  in [0, 1] to packed latents and back;
- :meth:`EditModel.sigmas` — the base pipeline's (shifted) flow-time schedule.

The image codec is separate (:class:`LatentCodec`): the models' own VAEs, or the exact
:class:`PatchCodec` the tiny built-in models use so that a few CPU minutes of training
are spent on motion rather than on a random autoencoder.
"""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..lora import ATTENTION_MODULES


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' import-time notes (e.g. image processors falling back to PIL
    where torchvision is absent: the adapters never use those processors)."""
    try:
        from transformers.utils import logging
    except ImportError:
        yield
        return
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` latents -> ``(B, h/2 · w/2, 4C)`` tokens (2×2 patches, the FLUX/Qwen packing)."""
    batch, channels, height, width = latents.shape
    if height % 2 or width % 2:
        raise ValueError(f"latents of {height}x{width}: packing needs even latent sizes")
    latents = latents.view(batch, channels, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return latents.reshape(batch, (height // 2) * (width // 2), channels * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents` for latents of ``height × width``."""
    batch, count, packed = tokens.shape
    if count != (height // 2) * (width // 2):
        raise ValueError(f"{count} tokens do not tile a {height}x{width} latent")
    latents = tokens.view(batch, height // 2, width // 2, packed // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return latents.reshape(batch, packed // 4, height, width)


class LatentCodec(abc.ABC):
    """Images ``(B, 3, H, W)`` in [0, 1] <-> normalised latents ``(B, C, H/f, W/f)``."""

    channels: int
    scale_factor: int

    @abc.abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def to(self, device=None, dtype=None) -> "LatentCodec":
        return self


class PatchCodec(LatentCodec):
    """Exact, weight-free codec: ``f × f`` pixel patches as channels, values in [−1, 1].

    ``decode(encode(x)) == x`` up to float rounding. Used by the tiny built-in models.
    """

    def __init__(self, factor: int = 4):
        self.scale_factor = factor
        self.channels = 3 * factor * factor

    def encode(self, images):
        return F.pixel_unshuffle(images * 2 - 1, self.scale_factor)

    def decode(self, latents):
        return ((F.pixel_shuffle(latents, self.scale_factor) + 1) / 2).clamp(0, 1)


class LowResCodec(LatentCodec):
    """Weight-free codec at half resolution: 2× average pooling, then ``f × f`` pixel patches.

    Decoding unpacks the patches and upsamples bilinearly, so fine detail is lost. The
    tiny built-in base uses it because a 2 M-parameter transformer learns 4× fewer
    values per token much faster on a CPU; a trained VAE would need weights.
    """

    def __init__(self, factor: int = 2, pool: int = 2):
        self.pool, self.factor = pool, factor
        self.scale_factor = pool * factor
        self.channels = 3 * factor * factor

    def encode(self, images):
        return F.pixel_unshuffle(F.avg_pool2d(images, self.pool) * 2 - 1, self.factor)

    def decode(self, latents):
        small = (F.pixel_shuffle(latents, self.factor) + 1) / 2
        return F.interpolate(small, scale_factor=self.pool, mode="bilinear", align_corners=False).clamp(0, 1)


class FluxVAECodec(LatentCodec):
    """diffusers ``AutoencoderKL`` as FLUX uses it: ``(z − shift) · scale``, posterior mode."""

    def __init__(self, vae):
        self.vae = vae
        self.channels = vae.config.latent_channels
        self.scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.shift = vae.config.shift_factor or 0.0
        self.scaling = vae.config.scaling_factor

    def encode(self, images):
        dtype = self.vae.dtype
        latents = self.vae.encode((images * 2 - 1).to(dtype)).latent_dist.mode()
        return (latents.float() - self.shift) * self.scaling

    def decode(self, latents):
        images = self.vae.decode((latents / self.scaling + self.shift).to(self.vae.dtype)).sample
        return ((images.float() + 1) / 2).clamp(0, 1)

    def to(self, device=None, dtype=None):
        self.vae.to(device=device, dtype=dtype)
        return self


class QwenVAECodec(LatentCodec):
    """diffusers ``AutoencoderKLQwenImage`` (a video VAE used on one frame), per-channel normalised."""

    def __init__(self, vae):
        self.vae = vae
        self.channels = vae.config.z_dim
        self.scale_factor = 2 ** len(vae.temperal_downsample)
        self.mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1)
        self.std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1)

    def encode(self, images):
        video = (images * 2 - 1).to(self.vae.dtype).unsqueeze(2)
        latents = self.vae.encode(video).latent_dist.mode()[:, :, 0].float()
        return (latents - self.mean.to(latents.device)) / self.std.to(latents.device)

    def decode(self, latents):
        latents = latents.float() * self.std.to(latents.device) + self.mean.to(latents.device)
        images = self.vae.decode(latents.unsqueeze(2).to(self.vae.dtype)).sample[:, :, 0]
        return ((images.float() + 1) / 2).clamp(0, 1)

    def to(self, device=None, dtype=None):
        self.vae.to(device=device, dtype=dtype)
        return self


@dataclass
class Condition:
    """Everything the transformer needs besides ``x_t`` and ``t``, for a batch of samples.

    ``tensors`` hold a leading batch dimension (padded along dim 1 when ``pad`` names the
    key and lengths differ); ``shared`` values are the same for every sample.
    """

    tensors: dict[str, torch.Tensor]
    shared: dict = field(default_factory=dict)
    pad: tuple[str, ...] = ()

    @property
    def batch_size(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def repeat(self, count: int) -> "Condition":
        """Each sample repeated ``count`` times (sample-major), e.g. K rollouts of one prompt."""
        return Condition({k: v.repeat_interleave(count, dim=0) for k, v in self.tensors.items()}, self.shared, self.pad)

    def select(self, index) -> "Condition":
        return Condition({k: v[index] for k, v in self.tensors.items()}, self.shared, self.pad)

    def to(self, device=None, dtype=None) -> "Condition":
        def move(t):
            return t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else None)

        return Condition({k: move(v) for k, v in self.tensors.items()}, self.shared, self.pad)

    @staticmethod
    def cat(conditions: list["Condition"]) -> "Condition":
        """Concatenate conditions along the batch, padding the ``pad`` keys with zeros."""
        first = conditions[0]
        tensors = {}
        for key in first.tensors:
            parts = [c.tensors[key] for c in conditions]
            if key in first.pad:
                longest = max(p.shape[1] for p in parts)
                parts = [F.pad(p, (0, 0) * (p.ndim - 2) + (0, longest - p.shape[1])) for p in parts]
            tensors[key] = torch.cat(parts)
        return Condition(tensors, first.shared, first.pad)


def check_model_folder(path, what: str, transformer_file) -> Path:
    """The local diffusers folder ``path`` of model ``what``, checked (with the single-file
    ``transformer_file``, if any, and the config it needs); FileNotFoundError naming what
    was looked for otherwise."""
    looked = []
    if path is None:
        raise FileNotFoundError(f"{what}: no model folder given (model_path); a local diffusers folder is needed")
    folder = Path(path).expanduser()
    looked.append(str(folder / "model_index.json"))
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"{what}: no diffusers folder at {folder}; looked for {', '.join(looked)}")
    if transformer_file is not None and not Path(transformer_file).is_file():
        raise FileNotFoundError(f"{what}: transformer file not found: {transformer_file}")
    if transformer_file is not None and not (folder / "transformer" / "config.json").is_file():
        raise FileNotFoundError(
            f"{what}: a single-file transformer needs its config; looked for {folder / 'transformer' / 'config.json'}")
    return folder


class EditModel(abc.ABC):
    """One instruction-editing flow model behind the trainer's four operations.

    Attributes:
        transformer: the diffusers transformer (LoRA adapters are added to it).
        codec: the image codec.
        base: LoRA file family, ``"flux"`` or ``"qwen_image"``.
        name: what the model is (printed, written into LoRA metadata).
        lora_target_modules: module-name suffixes a LoRA targets by default (the attention
            projections of both streams); :meth:`lora_exclusions` names modules to leave out.
        guidance: the CFG-free embedded guidance of its rollouts (None: no guidance input).
        text_pipeline: the diffusers pipeline whose ``encode_prompt`` encodes instructions
            (None where the model encodes them otherwise).
        scheduler_config: the base pipeline's scheduler config, from which :meth:`sigmas`
            builds the flow-time schedule.

    What a trainer may ask of a model is what this class declares; each model overrides
    what differs and inherits the rest.
    """

    base: str
    name: str
    lora_target_modules: tuple[str, ...] = ATTENTION_MODULES
    guidance: float | None = None
    text_pipeline = None

    def __init__(self, transformer, codec: LatentCodec, scheduler_config: dict):
        self.transformer = transformer
        self.codec = codec
        self.scheduler_config = dict(scheduler_config)
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    def lora_exclusions(self) -> list[str]:
        """Module names a LoRA on :attr:`lora_target_modules` must leave out (none by default)."""
        return []

    def weight_modules(self) -> dict[str, torch.nn.Module]:
        """The model's trainable or seeded parts by diffusers component name (``transformer``,
        text encoders), as a base-weights file stores them."""
        return {"transformer": self.transformer}

    # -- placement -------------------------------------------------------------------
    def to(self, device=None, dtype=None) -> "EditModel":
        """Move the transformer to ``device``/``dtype`` and the frozen encoders to ``device``."""
        if device is not None:
            self.device = torch.device(device)
        if dtype is not None:
            self.dtype = dtype
        self.transformer.to(device=self.device)
        if next(self.transformer.parameters()).dtype != self.dtype:
            self.transformer.to(dtype=self.dtype)
        self.codec.to(device=self.device)
        self._move_encoders(self.device)
        return self

    def _move_encoders(self, device) -> None:
        pass

    # -- geometry --------------------------------------------------------------------
    def latent_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """Latent ``(h, w)`` of an image of ``size = (H, W)``; both must tile 2×2 patches."""
        height, width = size
        multiple = self.codec.scale_factor * 2
        if height % multiple or width % multiple:
            raise ValueError(f"image size {height}x{width}: both sides must be multiples of {multiple} for {self.name}")
        return height // self.codec.scale_factor, width // self.codec.scale_factor

    def token_count(self, size: tuple[int, int]) -> int:
        height, width = self.latent_size(size)
        return (height // 2) * (width // 2)

    def token_channels(self) -> int:
        return self.codec.channels * 4

    # -- images <-> tokens -------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> packed latents ``(B, N, C)`` float32."""
        self.latent_size(tuple(images.shape[-2:]))
        return pack_latents(self.codec.encode(images.to(self.device)).float())

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Packed latents ``(B, N, C)`` -> images ``(B, 3, H, W)`` in [0, 1] (float32)."""
        height, width = self.latent_size(size)
        return self.codec.decode(unpack_latents(tokens.float(), height, width))

    def noise(self, batch: int, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
        """Standard normal packed latents ``(B, N, C)`` drawn on the CPU from ``generator``."""
        return torch.randn(batch, self.token_count(size), self.token_channels(), generator=generator)

    # -- schedule ----------------------------------------------------------------------
    def sigmas(self, steps: int, size: tuple[int, int]) -> torch.Tensor:
        """Flow times ``t_0 = 1 > … > t_steps = 0`` of the base pipeline, ``(steps + 1,)`` float64.

        Built by diffusers' own scheduler from the model's scheduler config, called as
        ``FluxKontextPipeline`` and ``QwenImageEditPipeline`` / ``QwenImageEditPlusPipeline``
        call it: ``sigmas = linspace(1, 1/steps, steps)`` and ``mu = calculate_shift(N, ...)``
        with ``N`` the target's token count (reference tokens not counted). The scheduler
        applies its shift (resolution-dependent ``mu`` when it shifts dynamically) and its
        ``shift_terminal`` stretch (Qwen-Image: the last sigma before 0 is 0.02), then
        appends the final 0.

        Args:
            steps: sampler steps, >= 1.
            size: ``(H, W)`` of the generated image (pixels).

        Returns:
            ``(steps + 1,)`` float64, decreasing, last value 0.

        Example:
            >>> model.sigmas(6, (512, 512)).shape  # doctest: +SKIP
            torch.Size([7])
        """
        if steps < 1:
            raise ValueError(f"sampling steps must be >= 1, got {steps}")
        with quiet_transformers():
            from diffusers import FlowMatchEulerDiscreteScheduler
            # The pipelines' calculate_shift (each pipeline holds a "Copied from" copy of this one).
            from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        config = scheduler.config
        mu = calculate_shift(self.token_count(size), config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                             config.get("max_shift", 1.15))
        with np.errstate(divide="ignore", invalid="ignore"):  # a degenerate schedule is refused below
            scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps), mu=mu)
        sigmas = scheduler.sigmas.detach().cpu().to(torch.float64)
        if not bool(torch.isfinite(sigmas).all() and (sigmas[1:] < sigmas[:-1]).all()):
            # e.g. one step with a shift_terminal: diffusers' stretch divides by 1 - sigma_1 = 0
            raise ValueError(f"{steps} sampling step(s) at {size[0]}x{size[1]}: {self.name}'s scheduler "
                             f"({dict(config)}) gives the schedule {sigmas.tolist()}, expected a decreasing "
                             "schedule from 1 to 0; use more steps")
        return sigmas

    # -- conditioning and the transformer ----------------------------------------------
    @abc.abstractmethod
    def encode_condition(self, prompt: str, reference: torch.Tensor, size: tuple[int, int]) -> Condition:
        """The condition of one edit: instruction ``prompt`` and reference ``(1, 3, H, W)`` at ``size``."""

    @abc.abstractmethod
    def velocity(self, x: torch.Tensor, t: torch.Tensor, condition: Condition) -> torch.Tensor:
        """Velocity ``(B, N, C)`` at packed latents ``x`` ``(B, N, C)`` and flow times ``t`` ``(B,)``."""

    def enable_gradient_checkpointing(self) -> None:
        self.transformer.enable_gradient_checkpointing()

    def describe(self) -> str:
        params = sum(p.numel() for p in self.transformer.parameters())
        return f"{self.name}: transformer {params / 1e6:.2f} M parameters, codec {type(self.codec).__name__}"
