"""InstantDrag's FlowDiffusion: an SD 1.5 UNet that edits an image to follow a dense flow.

Written from the paper's description (Shin et al., "InstantDrag", SIGGRAPH Asia 2024, §3.2);
no code or weights of the official release are used. The network is a diffusers
``UNet2DConditionModel`` whose ``conv_in`` reads 10 channels instead of 4:

    [ noisy latent (4) | source image latent (4) | flow at latent resolution / image size (2) ]

and predicts the noise ε of the first 4 (ε-prediction, as SD 1.5). Text is not used: every
pass gets the same "null" text embedding (see :class:`FlowDiffusion`). The conditioning
helpers are in :mod:`.flowdiffusion_conditioning`, sampling with the paper's two-scale
guidance in :mod:`.flowdiffusion_sampling`, training in :mod:`.train_flowdiffusion`.

Convention:
    - latents ``(B, 4, h, w)``: what the caller's codec makes of images ``(B, 3, H, W)`` in [0, 1]
      (for SD 1.5: the VAE's posterior mode times 0.18215; ``h = H / 8``)
    - flow condition ``(B, 2, h, w)``: the flow in pixels resized to ``(h, w)`` and divided by
      the latent size, i.e. the displacement as a fraction of the image width (x) and height (y)
    - a dropped condition is all zeros (never the latent of a black image)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel
from torch import nn

LATENT_CHANNELS = 4
FLOW_CHANNELS = 2
IN_CHANNELS = 2 * LATENT_CHANNELS + FLOW_CHANNELS
TEXT_TOKENS = 77  # CLIP's sequence length: the null embedding keeps SD 1.5's shape
PREDICTION_TYPES = ("epsilon", "v_prediction")
"""What the UNet's output means: the noise ε (SD 1.5, the paper) or the velocity
``v = √ᾱ_t ε − √(1−ᾱ_t) x_0`` (the tiny model: see :class:`FlowDiffusion`)."""


@dataclass(frozen=True)
class FlowDiffusionConfig:
    """Sampling settings, with the paper's defaults.

    Attributes:
        steps: denoising steps (the paper: 20).
        s_img: image guidance scale, pulls the result towards the source image (1.5).
        s_flow: flow guidance scale, pulls it towards following the flow (1.5).
        scheduler: ``"ddim"`` (default: deterministic, SD 1.5's ε-prediction sampler) or ``"euler"``.
    """

    steps: int = 20
    s_img: float = 1.5
    s_flow: float = 1.5
    scheduler: str = "ddim"

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps: expected >= 1, got {self.steps}")
        if self.scheduler not in ("ddim", "euler"):
            raise ValueError(f"scheduler: expected 'ddim' or 'euler', got {self.scheduler!r}")


def tiny_config(in_channels: int = IN_CHANNELS, sample_size: int = 32) -> dict:
    """An SD 1.5-shaped UNet config small enough for CPU tests (1.4 M parameters).

    Three levels (32, 64, 64 channels), 32-wide text embeddings, and self- and
    cross-attention (the modules a LoRA targets) on the lowest level only: attention at
    the 16 x 16 level doubled a training step's time on one CPU thread (0.45 vs 0.21 s for
    8 latents of 32 x 32). ``in_channels=4`` gives the "base model" :func:`from_sd_unet`
    starts from.
    """
    return dict(
        sample_size=sample_size, in_channels=in_channels, out_channels=LATENT_CHANNELS,
        block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8,
    )


class FlowDiffusion(nn.Module):
    """The flow-conditioned UNet plus the null text embedding it always sees.

    ``null_text`` ``(1, 77, cross_attention_dim)`` is a buffer, saved in the state dict and
    never trained. For a real SD 1.5 it must be the CLIP text encoder's embedding of the
    empty prompt "" (the loader computes it where a text encoder exists and passes it in);
    without one (tiny models, this machine) it is zero. A zero embedding gives zero keys and
    values in every cross-attention (diffusers' ``to_k``/``to_v`` have no bias), so the
    cross-attention output is the constant ``to_out`` bias: a learned embedding would only
    learn that bias again, hence a fixed buffer rather than a parameter.

    ``prediction_type`` says what the UNet outputs: ``"epsilon"`` (SD 1.5 and the paper; the
    default) or ``"v_prediction"``. Sampling always combines and steps on ε (v is converted,
    :func:`.flowdiffusion_sampling.noise_prediction`), so the guidance formula and the ε
    schedulers are the same for both. v-prediction is for models trained from scratch (the
    tiny one): with ε-prediction, at high noise ``ε ≈ x_t`` already gives a low loss and the
    estimate of the clean latent divides the ε error by √ᾱ_t (≈ 0.07 at t = 950), so the
    network never learns to copy the source through its zero-initialised conditioning
    channels; a v target at high noise is ≈ −x_0 and forces it to.

    Args:
        unet: a ``UNet2DConditionModel`` with ``in_channels == 10`` and ``out_channels == 4``.
        null_text: ``(1, 77, D)`` or None (zeros).
        prediction_type: one of :data:`PREDICTION_TYPES`.
    """

    def __init__(self, unet: UNet2DConditionModel, null_text: torch.Tensor | None = None,
                 prediction_type: str = "epsilon"):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type: expected one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")
        self.prediction_type = prediction_type
        if unet.config.in_channels != IN_CHANNELS or unet.config.out_channels != LATENT_CHANNELS:
            raise ValueError(f"unet: expected {IN_CHANNELS} input and {LATENT_CHANNELS} output channels, got "
                             f"{unet.config.in_channels} and {unet.config.out_channels} (use from_sd_unet for a "
                             "4-channel SD UNet)")
        self.unet = unet
        width = unet.config.cross_attention_dim
        if null_text is None:
            null_text = torch.zeros(1, TEXT_TOKENS, width)
        if null_text.ndim != 3 or null_text.shape[0] != 1 or null_text.shape[-1] != width:
            raise ValueError(f"null_text: expected (1, tokens, {width}), got {tuple(null_text.shape)}")
        self.register_buffer("null_text", null_text.to(unet.dtype), persistent=True)

    @classmethod
    def tiny(cls, sample_size: int = 32) -> "FlowDiffusion":
        """A tiny model made like the real one: a random 4-channel UNet through :func:`from_sd_unet`."""
        return from_sd_unet(UNet2DConditionModel(**tiny_config(LATENT_CHANNELS, sample_size)))

    def forward(self, noisy: torch.Tensor, timestep: torch.Tensor, image_latents: torch.Tensor,
                flow_condition: torch.Tensor) -> torch.Tensor:
        """The UNet's prediction ``(B, 4, h, w)``: the noise ε, or v for ``prediction_type == "v_prediction"``.

        Args:
            noisy: ``(B, 4, h, w)`` the noisy latent at ``timestep``.
            timestep: ``()`` or ``(B,)`` diffusion timesteps in [0, 1000).
            image_latents: ``(B, 4, h, w)`` the source image's latent (zeros when dropped).
            flow_condition: ``(B, 2, h, w)`` flow / image size (zeros when dropped).
        """
        inputs = pack_inputs(noisy, image_latents, flow_condition)
        text = self.null_text.to(inputs.dtype).expand(inputs.shape[0], -1, -1)
        return self.unet(inputs, timestep, encoder_hidden_states=text).sample


def pack_inputs(noisy: torch.Tensor, image_latents: torch.Tensor, flow_condition: torch.Tensor) -> torch.Tensor:
    """The UNet's input ``(B, 10, h, w)``: noisy latent, image latent, flow condition, in that order."""
    for name, tensor, channels in (("noisy", noisy, LATENT_CHANNELS), ("image_latents", image_latents, LATENT_CHANNELS),
                                   ("flow_condition", flow_condition, FLOW_CHANNELS)):
        if tensor.ndim != 4 or tensor.shape[1] != channels or tensor.shape[-2:] != noisy.shape[-2:] \
                or tensor.shape[0] != noisy.shape[0]:
            raise ValueError(f"{name}: expected ({noisy.shape[0]}, {channels}, {noisy.shape[-2]}, {noisy.shape[-1]}), "
                             f"got {tuple(tensor.shape)}")
    return torch.cat((noisy, image_latents.to(noisy.dtype), flow_condition.to(noisy.dtype)), dim=1)


def from_sd_unet(unet: UNet2DConditionModel, null_text: torch.Tensor | None = None) -> FlowDiffusion:
    """A FlowDiffusion initialised from an SD 1.5-style UNet (4 input channels).

    Every weight is copied; ``conv_in`` gets 6 new input channels (image latent, flow) whose
    weights are zero, so before any training the model ignores both conditions and predicts
    exactly what ``unet`` predicts (InstructPix2Pix initialises its extra channels the same way).
    ``unet`` itself is left unchanged.
    """
    if unet.config.in_channels != LATENT_CHANNELS:
        raise ValueError(f"unet: expected an SD UNet with {LATENT_CHANNELS} input channels, got "
                         f"{unet.config.in_channels}")
    config = dict(unet.config)
    # diffusers lists the arguments a model was built without under "_use_default_values" and
    # from_config resets those to the defaults: in_channels among them would undo the 10.
    config.pop("_use_default_values", None)
    config["in_channels"] = IN_CHANNELS
    with torch.device("meta"):  # no memory for the random initialisation we overwrite anyway
        flowdiffusion = UNet2DConditionModel.from_config(config)
    state = {name: tensor.detach().clone() for name, tensor in unet.state_dict().items()}
    old = state["conv_in.weight"]
    new = torch.zeros(old.shape[0], IN_CHANNELS, *old.shape[2:], dtype=old.dtype, device=old.device)
    new[:, :LATENT_CHANNELS] = old
    state["conv_in.weight"] = new
    # assign=True: the parameters become the copied tensors, on the source UNet's device and dtype.
    flowdiffusion.load_state_dict(state, assign=True, strict=True)
    return FlowDiffusion(flowdiffusion, null_text)


def parameter_count(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
