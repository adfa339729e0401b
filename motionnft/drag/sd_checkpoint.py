"""An SD 1.5 checkpoint -> the three parts FlowDiffusion is fine-tuned from: UNet, VAE, null text.

Two forms are read (:func:`load_sd15`):

- a **single file** as the original Stable Diffusion code and ComfyUI's ``models/checkpoints``
  keep it: ``.safetensors``, or ``.ckpt`` / ``.pt`` through ``torch.load(weights_only=True)``
  (no pickled code runs; a ``state_dict`` key is unwrapped). The UNet is
  ``model.diffusion_model.*`` (:func:`.sd_unet.unet_from_sd_state`), the VAE
  ``first_stage_model.*`` (diffusers' own ``convert_ldm_vae_checkpoint``, with a config read from
  the tensors' shapes), the CLIP text encoder ``cond_stage_model.transformer.*`` (transformers'
  ``CLIPTextModel`` with SD 1.5's ViT-L/14 text config, built here: no config file is needed);
- a **diffusers folder** (``unet/``, ``vae/``, optional ``text_encoder/``), read with
  ``from_pretrained(..., local_files_only=True)``.

The text encoder is only run once, on the empty prompt: FlowDiffusion uses no text, and every
pass sees that embedding (``null_text``, :class:`.flowdiffusion.FlowDiffusion`). Its token ids
need no tokenizer: SD 1.5's CLIP tokenizer (openai/clip-vit-large-patch14) gives "" as the
start token 49406, the end token 49407, and pads to 77 with its pad token "<|endoftext|>",
which is the end token again. Nothing is downloaded.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import NamedTuple

import torch

from .flowdiffusion import LATENT_CHANNELS, TEXT_TOKENS
from .flowdiffusion_conditioning import SD15_LATENT_SCALE
from .sd_unet import LDM_PREFIX, filled_model, unet_from_sd_state

VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
BOS, EOS = 49406, 49407
EMPTY_PROMPT_IDS = (BOS,) + (EOS,) * (TEXT_TOKENS - 1)
"""SD 1.5's token ids of the prompt "": start, end, then end as padding up to 77."""

VAE_FACTOR = 8
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")


def sd15_text_config(**overrides):
    """SD 1.5's text encoder config (CLIP ViT-L/14's text tower, as in openai/clip-vit-large-patch14)."""
    from transformers import CLIPTextConfig

    settings = dict(vocab_size=49408, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, max_position_embeddings=TEXT_TOKENS, hidden_act="quick_gelu",
                    layer_norm_eps=1e-5, projection_dim=768, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS)
    return CLIPTextConfig(**{**settings, **overrides})


class SD15Parts(NamedTuple):
    """What :func:`load_sd15` returns: the 4-channel diffusers UNet, the ``AutoencoderKL`` (its
    ``config.scaling_factor`` 0.18215) and the empty prompt's embedding ``(1, 77, 768)`` (None
    when the checkpoint has no text encoder)."""

    unet: object
    vae: object
    null_text: torch.Tensor | None


def load_sd15(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> SD15Parts:
    """The UNet, VAE and null text of an SD 1.5 checkpoint: a single file or a diffusers folder.

    Args:
        path: ``.safetensors`` / ``.ckpt`` / ``.pt`` file, or a folder with ``unet/`` and ``vae/``.
        dtype: of the UNet's and VAE's weights (float32 by default: training keeps its weights in
            float32 whatever the file stores). The null text is computed in float32.
    Returns the parts on the CPU, in eval mode. Raises FileNotFoundError / ValueError naming
    ``path`` and what was expected.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such SD 1.5 checkpoint (expected a .safetensors / .ckpt file or a "
                                "diffusers folder with unet/ and vae/)")
    if path.is_dir():
        return _from_diffusers_folder(path, dtype)
    return from_sd_state(read_state(path), path, dtype)


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a single-file checkpoint (a ``state_dict`` key unwrapped)."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(f"{path}: not a readable safetensors file ({error})") from None
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise ValueError(f"{path}: expected an SD 1.5 checkpoint ({', '.join(SINGLE_FILE_SUFFIXES)}) or a diffusers "
                         "folder")
    try:
        # weights_only: a checkpoint from the internet must not run code when it is read.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle raises many types; all mean "not a plain tensor checkpoint"
        raise ValueError(f"{path}: not a checkpoint torch.load(weights_only=True) reads ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    return {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}


def from_sd_state(state: dict[str, torch.Tensor], path: Path | str = "state",
                  dtype: torch.dtype = torch.float32) -> SD15Parts:
    """:class:`SD15Parts` of an original-layout SD 1.5 state dict (see the module docstring)."""
    unet_state = {key: value for key, value in state.items() if key.startswith(LDM_PREFIX)}
    if not unet_state:
        raise ValueError(f"{path}: no UNet tensors ({LDM_PREFIX}*); expected an SD 1.5 checkpoint in the original "
                         "layout (what ComfyUI's models/checkpoints hold)")
    vae_state = {key: value for key, value in state.items() if key.startswith(VAE_PREFIX)}
    if not vae_state:
        raise ValueError(f"{path}: no VAE tensors ({VAE_PREFIX}*); expected a full SD 1.5 checkpoint (UNet, VAE, "
                         "text encoder), not a UNet-only file")
    try:
        unet = unet_from_sd_state(unet_state, dtype=dtype)
    except ValueError as error:
        raise ValueError(f"{path}: UNet: {error}") from None
    _check_unet(unet, path)
    vae = vae_from_sd_state(vae_state, path, dtype)
    text_state = {key.removeprefix(TEXT_PREFIX): value for key, value in state.items() if key.startswith(TEXT_PREFIX)}
    if text_state:
        null_text = null_text_from_sd_state(text_state, path)
    else:
        warnings.warn(f"{path}: no text encoder ({TEXT_PREFIX}*): FlowDiffusion's null text is the zero embedding, "
                      "not SD 1.5's empty-prompt embedding")
        null_text = None
    _check_text(unet, null_text, path)
    return SD15Parts(unet, vae, null_text)


def _check_unet(unet, path) -> None:
    if unet.config.in_channels != LATENT_CHANNELS or unet.config.out_channels != LATENT_CHANNELS:
        raise ValueError(f"{path}: not SD 1.5-shaped: its UNet has {unet.config.in_channels} input and "
                         f"{unet.config.out_channels} output channels, expected {LATENT_CHANNELS} (an inpainting or "
                         "other special UNet cannot be the base)")


def _check_text(unet, null_text, path) -> None:
    width = unet.config.cross_attention_dim
    if null_text is not None and null_text.shape[-1] != width:
        raise ValueError(f"{path}: not SD 1.5-shaped: the text encoder is {null_text.shape[-1]} wide, the UNet reads "
                         f"{width}")


def vae_config(state: dict[str, torch.Tensor]) -> dict:
    """The diffusers ``AutoencoderKL`` config of an LDM-layout VAE (no prefix): channel widths,
    ResBlocks per level and latent channels read from the shapes; GroupNorm groups (32) and the
    scaling factor (0.18215) are SD 1.5's, since shapes cannot tell them."""
    levels = sorted({int(m.group(1)) for key in state for m in [re.match(r"encoder\.down\.(\d+)\.", key)] if m})
    if not levels or "encoder.conv_out.weight" not in state:
        raise ValueError("no encoder.down.* / encoder.conv_out tensors")
    widths = tuple(int(state[f"encoder.down.{level}.block.0.conv2.weight"].shape[0]) for level in levels)
    blocks = len({m.group(1) for key in state for m in [re.match(r"encoder\.down\.0\.block\.(\d+)\.", key)] if m})
    return dict(in_channels=int(state["encoder.conv_in.weight"].shape[1]),
                out_channels=int(state["decoder.conv_out.weight"].shape[0]),
                down_block_types=("DownEncoderBlock2D",) * len(levels), up_block_types=("UpDecoderBlock2D",) * len(levels),
                block_out_channels=widths, layers_per_block=blocks,
                latent_channels=int(state["encoder.conv_out.weight"].shape[0]) // 2,  # mean and log-variance
                norm_num_groups=32, sample_size=512, scaling_factor=SD15_LATENT_SCALE)


def vae_from_sd_state(state: dict[str, torch.Tensor], path: Path | str = "state", dtype: torch.dtype = torch.float32):
    """A diffusers ``AutoencoderKL`` (eval mode) of an SD 1.5 VAE in the original layout (with or
    without the ``first_stage_model.`` prefix); the key renaming is diffusers' own."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    plain = {key.removeprefix(VAE_PREFIX): value for key, value in state.items()}
    try:
        config = vae_config(plain)
    except (KeyError, ValueError) as error:
        raise ValueError(f"{path}: VAE: not an SD 1.5 VAE in the original layout ({error})") from None
    factor = 2 ** (len(config["block_out_channels"]) - 1)
    if config["latent_channels"] != LATENT_CHANNELS or factor != VAE_FACTOR:
        raise ValueError(f"{path}: not SD 1.5-shaped: its VAE has {config['latent_channels']} latent channels and "
                         f"downsamples by {factor}, expected {LATENT_CHANNELS} and {VAE_FACTOR}")
    converted = convert_ldm_vae_checkpoint({VAE_PREFIX + key: value for key, value in plain.items()}, config)
    return filled_model(AutoencoderKL, config, {key: value.to(dtype) for key, value in converted.items()},
                        f"{path}: VAE: its weights")


def null_text_from_sd_state(state: dict[str, torch.Tensor], path: Path | str = "state") -> torch.Tensor:
    """The empty prompt's ``last_hidden_state`` ``(1, 77, D)`` (float32) of a CLIP text encoder's
    tensors (``text_model.*``, or the older layout without that prefix). The encoder's size
    (width, layers, heads, MLP) is read from the shapes; the rest is SD 1.5's config."""
    from transformers import CLIPTextModel

    # SD 1.5 files name the tensors "text_model.*" (transformers 4's CLIPTextModel), some older ones
    # without that prefix; read both as "text_model.*", then use whichever the installed
    # transformers' model names (version 5 dropped the prefix). position_ids: a buffer it rebuilds.
    state = {(key if key.startswith("text_model.") else "text_model." + key): value.float()
             for key, value in state.items() if not key.endswith("position_ids")}
    try:
        embedding = state["text_model.embeddings.token_embedding.weight"]
        layers = 1 + max(int(m.group(1)) for key in state
                         for m in [re.match(r"text_model\.encoder\.layers\.(\d+)\.", key)] if m)
        hidden = int(embedding.shape[1])
        config = sd15_text_config(
            vocab_size=int(embedding.shape[0]), hidden_size=hidden, num_hidden_layers=layers,
            intermediate_size=int(state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
            max_position_embeddings=int(state["text_model.embeddings.position_embedding.weight"].shape[0]),
            num_attention_heads=max(1, hidden // 64), projection_dim=hidden)
    except (KeyError, ValueError) as error:
        raise ValueError(f"{path}: text encoder: not a CLIP text model ({type(error).__name__}: {error})") from None
    if config.vocab_size <= EOS or config.max_position_embeddings < TEXT_TOKENS:
        raise ValueError(f"{path}: text encoder: not SD 1.5's CLIP ({config.vocab_size} tokens, "
                         f"{config.max_position_embeddings} positions; expected 49408 and 77)")
    # Not on the meta device: position_ids is a non-persistent buffer the state dict does not refill.
    model = CLIPTextModel(config)
    if not any(key.startswith("text_model.") for key in model.state_dict()):
        state = {key.removeprefix("text_model."): value for key, value in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path}: text encoder: weights do not fill SD 1.5's CLIP text model "
                         f"({str(error).splitlines()[0]})") from None
    return empty_prompt_embedding(model)


def empty_prompt_embedding(text_encoder) -> torch.Tensor:
    """``text_encoder``'s ``last_hidden_state`` ``(1, 77, D)`` of :data:`EMPTY_PROMPT_IDS`, float32 on the CPU."""
    parameter = next(text_encoder.parameters())
    ids = torch.tensor([EMPTY_PROMPT_IDS], device=parameter.device)
    with torch.no_grad():
        hidden = text_encoder.eval()(input_ids=ids).last_hidden_state
    return hidden.float().cpu()


def _from_diffusers_folder(path: Path, dtype: torch.dtype) -> SD15Parts:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    for part in ("unet", "vae"):
        if not (path / part / "config.json").is_file():
            raise ValueError(f"{path}: a folder, but not a diffusers SD 1.5 model: no {part}/config.json (expected "
                             "unet/, vae/ and optionally text_encoder/)")
    try:
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True, torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True, torch_dtype=dtype)
    except (OSError, ValueError, EnvironmentError) as error:
        raise ValueError(f"{path}: the diffusers folder does not load ({str(error).splitlines()[0]})") from None
    _check_unet(unet, path)
    if vae.config.latent_channels != LATENT_CHANNELS or len(vae.config.block_out_channels) != 4:
        raise ValueError(f"{path}: not SD 1.5-shaped: its VAE has {vae.config.latent_channels} latent channels and "
                         f"{len(vae.config.block_out_channels)} levels, expected {LATENT_CHANNELS} and 4")
    null_text = None
    if (path / "text_encoder" / "config.json").is_file():
        from transformers import CLIPTextModel

        try:
            text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", local_files_only=True,
                                                         dtype=torch.float32)
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: text_encoder does not load ({str(error).splitlines()[0]})") from None
        null_text = empty_prompt_embedding(text_encoder)
        del text_encoder
    else:
        warnings.warn(f"{path}: no text_encoder/: FlowDiffusion's null text is the zero embedding, not SD 1.5's "
                      "empty-prompt embedding")
    _check_text(unet, null_text, path)
    return SD15Parts(unet.eval(), vae.eval(), null_text)
