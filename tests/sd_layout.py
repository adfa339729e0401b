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


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    """Test-only inverse of diffusers' ``convert_ldm_vae_checkpoint``: a diffusers ``AutoencoderKL``'s
    tensors under the original SD names (``encoder.down.0.block.0.conv1.weight``, ...; the
    mid-block attention's projections as 1 x 1 convolutions, as the original code stores them)."""
    levels = len(vae.config.block_out_channels)
    state = {}
    for key, value in vae.state_dict().items():
        name = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        name = name.replace("mid_block.resnets.0", "mid.block_1").replace("mid_block.resnets.1", "mid.block_2")
        if "mid_block.attentions.0." in name:
            name = name.replace("mid_block.attentions.0.", "mid.attn_1.")
            for new, old in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"),
                             ("to_out.0", "proj_out")):
                name = name.replace(f"attn_1.{new}.", f"attn_1.{old}.")
            if value.ndim == 2:
                value = value[:, :, None, None]
        for level in range(levels):
            name = name.replace(f"encoder.down_blocks.{level}.resnets.", f"encoder.down.{level}.block.")
            name = name.replace(f"encoder.down_blocks.{level}.downsamplers.0.", f"encoder.down.{level}.downsample.")
            # the decoder's levels are numbered from the bottom in the original layout
            name = name.replace(f"decoder.up_blocks.{level}.resnets.", f"decoder.up.{levels - 1 - level}.block.")
            name = name.replace(f"decoder.up_blocks.{level}.upsamplers.0.", f"decoder.up.{levels - 1 - level}.upsample.")
        state[name] = value
    return state


def tiny_sd_parts(seed: int = 0):
    """(UNet, VAE, CLIP text model): SD 1.5's architecture shrunk for CPU tests. The UNet has
    SD 1.5's 32 GroupNorm groups and 8 heads (what ``unet_from_sd_state`` assumes), the VAE its 4
    levels (factor 8) and 4 latent channels, the text model its 49408-token vocabulary and 77
    positions (the empty prompt's ids are SD 1.5's) at width 32, the UNet's cross-attention width."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    from motionnft.drag.flowdiffusion import tiny_config
    from motionnft.drag.sd_checkpoint import sd15_text_config

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**dict(tiny_config(4), norm_num_groups=32)).eval()
    vae = AutoencoderKL(block_out_channels=(32,) * 4, layers_per_block=1, norm_num_groups=32, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        scaling_factor=0.18215).eval()
    text = CLIPTextModel(sd15_text_config(hidden_size=32, num_hidden_layers=2, num_attention_heads=1,
                                          intermediate_size=64, projection_dim=32)).eval()
    return unet, vae, text


def sd_checkpoint_state(unet, vae, text=None) -> dict[str, torch.Tensor]:
    """The three models' tensors as an original SD 1.5 single-file checkpoint holds them."""
    state = {"model.diffusion_model." + k: v for k, v in to_ldm(unet).items()}
    state.update({"first_stage_model." + k: v for k, v in vae_to_ldm(vae).items()})
    if text is not None:
        # "text_model.*" as SD 1.5 files have it (transformers 4's names; version 5 drops the prefix)
        state.update({"cond_stage_model.transformer." + ("" if k.startswith("text_model.") else "text_model.") + k: v
                      for k, v in text.state_dict().items()})
    return {k: v.detach().clone().contiguous() for k, v in state.items()}
