"""An SD 1.5 UNet in the original (LDM) layout -> a diffusers ``UNet2DConditionModel``.

ComfyUI keeps a checkpoint's UNet in the layout of the original Stable Diffusion code
(``input_blocks.0.0.weight``, ``middle_block.1.proj_in.weight``, ``out.2.weight``: what
``model.model.diffusion_model.state_dict()`` gives). FlowDiffusion is a diffusers model, so the
FlowDiffusion Edit node converts such a state dict here. The key renaming is diffusers' own
(``diffusers.loaders.single_file_utils.convert_ldm_unet_checkpoint``, the converter behind
``from_single_file``); this module only builds the diffusers config it needs from the tensors'
shapes, since a ComfyUI model carries no config file:

- ``model_channels``, input and output channels: ``input_blocks.0.0`` and ``out.2``;
- one level per run of ResBlocks between downsamplers (``input_blocks.N.0.op``); its width
  from the ResBlock's ``out_layers.3``, its attention from ``input_blocks.N.1.proj_in`` and its
  transformer depth from the number of ``transformer_blocks``;
- the text width (``cross_attention_dim``, 768 for SD 1.5) from the first ``attn2.to_k``;
- what shapes cannot tell: attention heads (SD 1.5: 8 heads, diffusers' ``attention_head_dim = 8``)
  and GroupNorm groups (32) are arguments with SD 1.5's values.

No ComfyUI import: the caller passes the plain state dict.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

LDM_PREFIX = "model.diffusion_model."
"""The prefix diffusers' converter expects (an original SD checkpoint's UNet keys)."""


def _blocks(state: Mapping[str, torch.Tensor], name: str) -> int:
    indices = {int(m.group(1)) for key in state for m in [re.match(rf"{name}\.(\d+)\.", key)] if m}
    return max(indices) + 1 if indices else 0


def _depth(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    """The number of transformer blocks under ``prefix`` (0: no attention there)."""
    return _blocks(state, re.escape(prefix) + r"transformer_blocks")


def sd_unet_config(state: Mapping[str, torch.Tensor], num_heads: int = 8, norm_num_groups: int = 32,
                   sample_size: int = 64) -> dict:
    """The diffusers ``UNet2DConditionModel`` config of an LDM-layout UNet state dict (no prefix).

    Raises ValueError when ``state`` is not an SD-style UNet (no ``input_blocks.0.0.weight``) or
    has levels with different ResBlock counts (diffusers' converter takes one count).

    >>> sd_unet_config({"input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3)})["block_out_channels"]
    Traceback (most recent call last):
    ...
    ValueError: state: no ResBlock found after input_blocks.0; expected an SD 1.5-style UNet
    """
    if "input_blocks.0.0.weight" not in state:
        raise ValueError("state: no input_blocks.0.0.weight; expected an SD 1.5-style UNet state dict in the "
                         "original layout (keys like input_blocks.0.0.weight, without a model.diffusion_model. prefix)")
    conv_in = state["input_blocks.0.0.weight"]
    model_channels, in_channels = conv_in.shape[0], conv_in.shape[1]
    levels: list[dict] = [{"blocks": 0, "channels": model_channels, "depth": 0}]
    for index in range(1, _blocks(state, "input_blocks")):
        prefix = f"input_blocks.{index}."
        if f"{prefix}0.op.weight" in state:  # a downsampler closes the level
            levels.append({"blocks": 0, "channels": model_channels, "depth": 0})
            continue
        if f"{prefix}0.out_layers.3.weight" not in state:
            raise ValueError(f"state: input_blocks.{index} is neither a ResBlock nor a downsampler")
        level = levels[-1]
        level["blocks"] += 1
        level["channels"] = state[f"{prefix}0.out_layers.3.weight"].shape[0]
        level["depth"] = max(level["depth"], _depth(state, f"{prefix}1."))
    if levels[0]["blocks"] == 0:
        raise ValueError("state: no ResBlock found after input_blocks.0; expected an SD 1.5-style UNet")
    counts = {level["blocks"] for level in levels}
    if len(counts) != 1:
        raise ValueError(f"state: levels with different ResBlock counts {[lv['blocks'] for lv in levels]}; "
                         "diffusers' converter needs one count for every level")
    attention = [level["depth"] > 0 for level in levels]
    to_k = next((key for key in state if key.endswith("attn2.to_k.weight")), None)
    if to_k is None:
        raise ValueError("state: no cross-attention (attn2.to_k) found; expected an SD 1.5-style UNet")
    proj_in = next(key for key in state if key.endswith("proj_in.weight"))
    depths = [level["depth"] or 1 for level in levels]
    out = state.get("out.2.weight")
    return dict(
        sample_size=sample_size, in_channels=int(in_channels),
        out_channels=int(out.shape[0]) if out is not None else 4,
        block_out_channels=tuple(int(level["channels"]) for level in levels),
        layers_per_block=counts.pop(), norm_num_groups=norm_num_groups,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        mid_block_type="UNetMidBlock2DCrossAttn" if "middle_block.1.proj_in.weight" in state else "UNetMidBlock2D",
        cross_attention_dim=int(state[to_k].shape[1]), attention_head_dim=num_heads,
        transformer_layers_per_block=depths[0] if len(set(depths)) == 1 else tuple(depths),
        use_linear_projection=state[proj_in].ndim == 2,
    )


def unet_from_sd_state(state: Mapping[str, torch.Tensor], num_heads: int = 8, norm_num_groups: int = 32,
                       dtype: torch.dtype | None = None, device: torch.device | str | None = None):
    """A diffusers ``UNet2DConditionModel`` (eval mode) holding an LDM-layout UNet's weights.

    Args:
        state: the UNet's tensors in the original SD layout, with or without the
            ``model.diffusion_model.`` prefix (ComfyUI's ``diffusion_model.state_dict()`` has none).
        num_heads, norm_num_groups: what shapes cannot tell (SD 1.5: 8 and 32).
        dtype, device: of the new model's weights (default: the tensors' own).
    Raises ValueError naming what is missing or left over (every tensor must find its place).
    """
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    plain = {key.removeprefix(LDM_PREFIX): value for key, value in state.items()}
    config = sd_unet_config(plain, num_heads, norm_num_groups)
    converted = convert_ldm_unet_checkpoint({LDM_PREFIX + key: value for key, value in plain.items()}, config)
    converted = {key: value.to(device=device, dtype=dtype if value.is_floating_point() else None)
                 for key, value in converted.items()}
    return filled_model(UNet2DConditionModel, config, converted, "state: the SD UNet's weights")


def filled_model(model_class, config: dict, state: Mapping[str, torch.Tensor], what: str):
    """``model_class.from_config(config)`` (a diffusers model, eval mode) holding exactly ``state``:
    built on the meta device so no random weights are drawn first. ValueError starting with
    ``what`` when a tensor is missing or left over."""
    with torch.device("meta"):
        model = model_class.from_config(config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{what} do not fill a {model_class.__name__} of the sizes read from them "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.load_state_dict(dict(state), assign=True, strict=True)
    return model.eval()
