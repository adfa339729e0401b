"""A UNet's tensors in the original Stable Diffusion layout (what ComfyUI's SD 1.5 models hold):
the test-only inverse of diffusers' converter, used to check motionnft.drag.sd_unet and to build
SD 1.5 checkpoints that ComfyUI loads in host tests."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def to_ldm(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """Test-only inverse of diffusers' converter: a diffusers UNet's tensors under the original SD
    names (what ComfyUI's ``diffusion_model.state_dict()`` gives)."""
    config, levels = unet.config, len(unet.config.block_out_channels)
    blocks = config.layers_per_block
    renames = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
               "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
               "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
               "mid_block.resnets.1": "middle_block.2"}
    index = 1
    for level in range(levels):
        for layer in range(blocks):
            renames[f"down_blocks.{level}.resnets.{layer}"] = f"input_blocks.{index}.0"
            renames[f"down_blocks.{level}.attentions.{layer}"] = f"input_blocks.{index}.1"
            index += 1
        if level < levels - 1:
            renames[f"down_blocks.{level}.downsamplers.0.conv"] = f"input_blocks.{index}.0.op"
            index += 1
    index = 0
    for level in range(levels):
        for layer in range(blocks + 1):
            renames[f"up_blocks.{level}.resnets.{layer}"] = f"output_blocks.{index}.0"
            renames[f"up_blocks.{level}.attentions.{layer}"] = f"output_blocks.{index}.1"
            index += 1
        if level < levels - 1:
            attention = config.up_block_types[level].startswith("CrossAttn")
            renames[f"up_blocks.{level}.upsamplers.0.conv"] = f"output_blocks.{index - 1}.{2 if attention else 1}.conv"
    state = {}
    for key, value in unet.state_dict().items():
        prefix = max((p for p in renames if key.startswith(p + ".")), key=len)
        rest = key[len(prefix) + 1:]
        if ".resnets." in prefix:
            head, _, tail = rest.partition(".")
            rest = f"{RESNET[head]}.{tail}"
        state[f"{renames[prefix]}.{rest}"] = value
    return state


def tiny_sd15_config() -> dict:
    """The smallest UNet ComfyUI detects as SD 1.5 (model_channels 320, context_dim 768, conv
    proj_in, no ADM): one level of one ResBlock with attention, plus the middle block (25.8 M
    parameters; ComfyUI reads channel_mult [1], num_res_blocks [1] and depths from the tensors)."""
    return dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(320,), layers_per_block=1,
                down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
                cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)


def taesd_state(latent_channels: int = 4) -> dict[str, torch.Tensor]:
    """Random weights of the Tiny AutoEncoder (TAESD) under the names ComfyUI's ``comfy.taesd``
    gives them: the smallest VAE with SD 1.5's 4 latent channels and factor 8 that a checkpoint's
    ``first_stage_model.`` can hold (ComfyUI leaves missing VAE weights uninitialised)."""
    from torch import nn

    def conv(n_in, n_out, **kwargs):
        return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)

    class Block(nn.Module):
        def __init__(self, n: int):
            super().__init__()
            self.conv = nn.Sequential(conv(n, n), nn.ReLU(), conv(n, n), nn.ReLU(), conv(n, n))

    def down():
        return [conv(64, 64, stride=2, bias=False), Block(64), Block(64), Block(64)]

    def up():
        return [Block(64), Block(64), Block(64), nn.Upsample(scale_factor=2), conv(64, 64, bias=False)]

    encoder = nn.Sequential(conv(3, 64), Block(64), *down(), *down(), *down(), conv(64, latent_channels))
    decoder = nn.Sequential(nn.Identity(), conv(latent_channels, 64), nn.ReLU(), *up(), *up(), *up(), Block(64),
                            conv(64, 3))
    state = {f"taesd_encoder.{k}": v for k, v in encoder.state_dict().items()}
    state.update({f"taesd_decoder.{k}": v for k, v in decoder.state_dict().items()})
    state.update(vae_scale=torch.tensor(1.0), vae_shift=torch.tensor(0.0))
    return state
