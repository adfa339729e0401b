"""FLUX.1 Kontext [dev] on diffusers: the reference image's tokens follow the target's.

As ``FluxKontextPipeline`` does: the reference is VAE-encoded and packed, its position
ids are the target grid with ``id[0] = 1``, the transformer sees
``[target tokens, reference tokens]`` and its prediction is sliced back to the target
tokens. Embedded (distilled) guidance 2.5, no true CFG.
"""

from __future__ import annotations

import os

import torch

from .base import (Condition, EditModel, FluxVAECodec, LatentCodec, LowResCodec, PatchCodec, check_model_folder,
                   quiet_transformers)


def _position_ids(height: int, width: int, first: float) -> torch.Tensor:
    """``(h/2 · w/2, 3)`` ids of a packed latent grid: ``(first, row, column)``."""
    rows, cols = height // 2, width // 2
    ids = torch.zeros(rows, cols, 3)
    ids[..., 0] = first
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(cols)[None, :]
    return ids.reshape(rows * cols, 3)


class FluxKontextModel(EditModel):
    base = "flux"

    def __init__(self, transformer, codec: LatentCodec, text_pipeline, scheduler_config: dict,
                 guidance: float = 2.5, max_sequence_length: int = 512, name: str = "FLUX.1 Kontext [dev]"):
        super().__init__(transformer, codec, scheduler_config)
        self.text_pipeline = text_pipeline
        self.guidance = guidance if transformer.config.guidance_embeds else None
        self.max_sequence_length = max_sequence_length
        self.name = name

    def _move_encoders(self, device):
        for module in (self.text_pipeline.text_encoder, self.text_pipeline.text_encoder_2):
            module.to(device)

    def weight_modules(self):
        return {"transformer": self.transformer, "text_encoder": self.text_pipeline.text_encoder,
                "text_encoder_2": self.text_pipeline.text_encoder_2}

    @torch.no_grad()
    def encode_condition(self, prompt, reference, size):
        from ..image import resize_image

        prompt_embeds, pooled, text_ids = self.text_pipeline.encode_prompt(
            prompt=[prompt], prompt_2=None, device=self.device, num_images_per_prompt=1,
            max_sequence_length=self.max_sequence_length,
        )
        reference_tokens = self.encode_images(resize_image(reference.float(), size))
        height, width = self.latent_size(size)
        image_ids = torch.cat((_position_ids(height, width, 0.0), _position_ids(height, width, 1.0)))
        return Condition(
            tensors={
                "prompt_embeds": prompt_embeds.float().cpu(),
                "pooled": pooled.float().cpu(),
                "reference": reference_tokens.cpu(),
            },
            shared={"text_ids": text_ids.float().cpu(), "image_ids": image_ids},
        )

    def velocity(self, x, t, condition):
        count = x.shape[1]
        dtype, device = self.dtype, self.device
        tensors = {k: v.to(device=device, dtype=dtype) for k, v in condition.tensors.items()}
        guidance = None
        if self.guidance is not None:
            guidance = torch.full((x.shape[0],), float(self.guidance), device=device, dtype=dtype)
        out = self.transformer(
            hidden_states=torch.cat((x.to(device, dtype), tensors["reference"]), dim=1),
            timestep=t.to(device=device, dtype=dtype),
            guidance=guidance,
            pooled_projections=tensors["pooled"],
            encoder_hidden_states=tensors["prompt_embeds"],
            txt_ids=condition.shared["text_ids"].to(device=device, dtype=dtype),
            img_ids=condition.shared["image_ids"].to(device=device, dtype=dtype),
            return_dict=False,
        )[0]
        return out[:, :count].float()


def _text_pipeline(text_encoder, tokenizer, text_encoder_2, tokenizer_2, scheduler):
    with quiet_transformers():
        from diffusers import FluxKontextPipeline

    return FluxKontextPipeline(scheduler=scheduler, vae=None, text_encoder=text_encoder, tokenizer=tokenizer,
                               text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=None)


def load_flux_kontext(path: str | os.PathLike | None, transformer_file: str | os.PathLike | None = None,
                      dtype: torch.dtype = torch.bfloat16, guidance: float = 2.5,
                      max_sequence_length: int = 512) -> FluxKontextModel:
    """FLUX.1 Kontext [dev] from a local diffusers folder, optionally with a single-file transformer.

    Args:
        path: the diffusers folder (``model_index.json``, ``transformer/``, ``vae/``,
            ``text_encoder/``, ``text_encoder_2/``, ``tokenizer/``, ``tokenizer_2/``,
            ``scheduler/``).
        transformer_file: a single-file transformer checkpoint (``.safetensors``, the
            original BFL layout or diffusers'), replacing ``path/transformer``; its config
            is read from ``path/transformer/config.json``.

    Raises:
        FileNotFoundError naming every place looked at.
    """
    with quiet_transformers():
        from diffusers import FluxKontextPipeline, FluxTransformer2DModel

    folder = check_model_folder(path, "FLUX.1 Kontext", transformer_file)
    transformer = None
    if transformer_file is not None:
        transformer = FluxTransformer2DModel.from_single_file(
            str(transformer_file), config=str(folder / "transformer"), torch_dtype=dtype, local_files_only=True)
    extra = {"transformer": transformer} if transformer is not None else {}
    pipe = FluxKontextPipeline.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True, **extra)
    text = _text_pipeline(pipe.text_encoder, pipe.tokenizer, pipe.text_encoder_2, pipe.tokenizer_2, pipe.scheduler)
    for module in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        module.requires_grad_(False)
    model = FluxKontextModel(pipe.transformer, FluxVAECodec(pipe.vae), text, dict(pipe.scheduler.config),
                             guidance=guidance, max_sequence_length=max_sequence_length,
                             name=f"FLUX.1 Kontext ({folder.name})")
    model.dtype = dtype
    return model


TINY_FLUX_SIZES = {
    # name: (layers, single layers, heads, head dim, rope axes, text width)
    "test": (1, 1, 2, 16, (4, 4, 8), 32),
    # The demo model is trained, so its width (heads x head dim) must be at least the
    # token width (192 with the 4x4 patch codec): the first layer maps tokens into that
    # width, and a narrower one discards part of the noise it has to predict.
    "demo": (2, 2, 8, 32, (8, 12, 12), 32),
    # The shipped base of the tiny preset (1.85 M parameters, with the "lowres" codec):
    # two wide heads learned the synthetic task faster than eight narrow ones.
    "base": (2, 2, 2, 64, (8, 28, 28), 32),
}


def tiny_flux_kontext(seed: int = 0, size: str = "test", codec: str = "patch",
                      max_sequence_length: int = 64) -> FluxKontextModel:
    """A FLUX.1 Kontext with the real diffusers/transformers classes at toy sizes, random weights.

    Args:
        size: a :data:`TINY_FLUX_SIZES` name: ``"test"`` (the smallest, for unit tests),
            ``"demo"``, or ``"base"`` (the tiny preset's shipped base).
        codec: ``"patch"`` (exact 4×4 pixel patches), ``"lowres"`` (2×2 patches of the
            half-resolution image, the shipped base's) or ``"vae"`` (a tiny random
            ``AutoencoderKL``, to exercise the real VAE path).
    """
    with quiet_transformers():
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    from .tiny import tiny_clip_and_t5

    layers, single, heads, head_dim, axes, text_width = TINY_FLUX_SIZES[size]
    if codec == "patch":
        latent_codec = PatchCodec(4)
    elif codec == "lowres":
        latent_codec = LowResCodec(2)
    elif codec == "vae":
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4, 8),
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                            layers_per_block=1, latent_channels=4, norm_num_groups=1, use_quant_conv=False,
                            use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035).eval()
        latent_codec = FluxVAECodec(vae.requires_grad_(False))
    else:
        raise ValueError(f"tiny codec {codec!r}: expected 'patch', 'lowres' or 'vae'")
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=latent_codec.channels * 4, num_layers=layers, num_single_layers=single,
        attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=text_width,
        pooled_projection_dim=text_width, axes_dims_rope=list(axes), guidance_embeds=True,
    )
    clip, clip_tokenizer, t5, t5_tokenizer = tiny_clip_and_t5(seed + 2, text_width)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    text = _text_pipeline(clip.requires_grad_(False), clip_tokenizer, t5.requires_grad_(False), t5_tokenizer, scheduler)
    return FluxKontextModel(transformer, latent_codec, text, dict(scheduler.config), guidance=2.5,
                            max_sequence_length=max_sequence_length, name=f"tiny FLUX.1 Kontext ({size}, {codec})")
