"""Qwen-Image-Edit and its 2509 ("Plus") release on diffusers.

What follows ``QwenImageEditPipeline`` / ``QwenImageEditPlusPipeline`` (diffusers 0.42.1):

- the instruction is encoded by Qwen2.5-VL with the pipeline's own prompt template and
  the reference image's vision tokens, the image resized as the pipeline resizes it
  (``calculate_dimensions`` of the image's aspect ratio, PIL Lanczos): to ~1 MP
  (``1024·1024``) for Qwen-Image-Edit, to ~0.15 MP (``384·384``) for 2509;
- the reference is VAE-encoded and its packed tokens follow the target's
  (``img_shapes = [[target, reference]]``); the prediction is sliced back to the target
  tokens; no guidance embedding, no true CFG (guidance 1.0);
- the schedule is diffusers' scheduler called as the pipelines call it
  (:meth:`~motionnft.models.base.EditModel.sigmas`).

Where training differs from the pipelines: the pipelines generate at ~1 MP by default
and VAE-encode the reference at ~1 MP (``calculate_dimensions(1024·1024, aspect)``); here
the target *and the reference latents* are at the training size (e.g. 512², so
``img_shapes`` holds two 32×32 grids), as MotionNFT trains at 512². Only the
vision-language encoder sees the pipelines' image sizes.

Which release a diffusers folder holds is read from its ``model_index.json``
(``_class_name``): ``QwenImageEditPipeline`` or ``QwenImageEditPlusPipeline`` (2509).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..image import resize_image, tensor_to_pil
from .base import Condition, EditModel, LatentCodec, PatchCodec, QwenVAECodec, check_model_folder, quiet_transformers

PIPELINES = {"QwenImageEditPipeline": False, "QwenImageEditPlusPipeline": True}
"""``model_index.json`` ``_class_name`` -> is it the 2509 ("Plus") release."""


class QwenImageEditModel(EditModel):
    base = "qwen_image"
    guidance = None

    def __init__(self, transformer, codec: LatentCodec, text_pipeline, scheduler_config: dict, plus: bool,
                 name: str = "Qwen-Image-Edit"):
        super().__init__(transformer, codec, scheduler_config)
        self.text_pipeline = text_pipeline
        self.plus = plus
        self.name = name

    def lora_exclusions(self) -> list[str]:
        """Modules a LoRA must leave out: the last block discards its text stream, so its
        text queries and text output projection never receive a gradient (DDP would stall)."""
        last = self.transformer.config.num_layers - 1
        return [f"transformer_blocks.{last}.attn.to_add_out", f"transformer_blocks.{last}.attn.add_q_proj"]

    def _move_encoders(self, device):
        self.text_pipeline.text_encoder.to(device)

    def condition_image(self, reference: torch.Tensor):
        """The reference as the pipeline hands it to the vision-language encoder.

        Args:
            reference: ``(1, 3, H, W)`` in [0, 1], at any size.

        Returns:
            A PIL image resized (Lanczos) to ``calculate_dimensions(1024·1024, W/H)``
            (Qwen-Image-Edit), or a list of one PIL image at
            ``calculate_dimensions(384·384, W/H)`` (2509): sides multiples of 32, the
            aspect ratio kept.
        """
        with quiet_transformers():
            from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit, pipeline_qwenimage_edit_plus

        height, width = reference.shape[-2:]
        pil = tensor_to_pil(reference.float())
        resize = self.text_pipeline.image_processor.resize  # the pipelines' own PIL resize
        if self.plus:
            w, h = pipeline_qwenimage_edit_plus.calculate_dimensions(
                pipeline_qwenimage_edit_plus.CONDITION_IMAGE_SIZE, width / height)
            return [resize(pil, h, w)]
        w, h, _ = pipeline_qwenimage_edit.calculate_dimensions(1024 * 1024, width / height)
        return resize(pil, h, w)

    @torch.no_grad()
    def encode_condition(self, prompt, reference, size):
        embeds, mask = self.text_pipeline.encode_prompt(
            prompt=[prompt], image=self.condition_image(reference), device=self.device, num_images_per_prompt=1)
        if mask is None:
            mask = torch.ones(embeds.shape[:2], dtype=torch.long)
        reference_tokens = self.encode_images(resize_image(reference.float(), size))
        height, width = self.latent_size(size)
        return Condition(
            tensors={"prompt_embeds": embeds.float().cpu(), "mask": mask.cpu(), "reference": reference_tokens.cpu()},
            shared={"img_shapes": [(1, height // 2, width // 2), (1, height // 2, width // 2)]},
            pad=("prompt_embeds", "mask"),
        )

    def velocity(self, x, t, condition):
        count = x.shape[1]
        device, dtype = self.device, self.dtype
        tensors = condition.tensors
        out = self.transformer(
            hidden_states=torch.cat((x.to(device, dtype), tensors["reference"].to(device, dtype)), dim=1),
            timestep=t.to(device=device, dtype=dtype),
            guidance=None,
            encoder_hidden_states=tensors["prompt_embeds"].to(device, dtype),
            encoder_hidden_states_mask=tensors["mask"].to(device),
            img_shapes=[list(condition.shared["img_shapes"])] * x.shape[0],
            return_dict=False,
        )[0]
        return out[:, :count].float()


def _text_pipeline(text_encoder, processor, tokenizer, scheduler, plus: bool):
    with quiet_transformers():
        from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline

    cls = QwenImageEditPlusPipeline if plus else QwenImageEditPipeline
    return cls(scheduler=scheduler, vae=None, text_encoder=text_encoder, tokenizer=tokenizer, processor=processor,
               transformer=None)


def qwen_edit_release(folder: str | os.PathLike, plus: bool | None = None) -> bool:
    """Which Qwen-Image-Edit release a diffusers folder holds: True for 2509 ("Plus").

    Args:
        folder: a diffusers folder with ``model_index.json``.
        plus: None reads the folder; True (``qwen_image_edit_plus``) or False asks for one
            release, and a folder that holds the other one is refused.

    Raises:
        ValueError naming the folder, the ``_class_name`` found and the kind asked for,
        when the folder is not a Qwen-Image-Edit pipeline or contradicts ``plus``.
    """
    index = Path(folder) / "model_index.json"
    try:
        found = json.loads(index.read_text()).get("_class_name")
    except (OSError, json.JSONDecodeError, AttributeError) as error:
        raise ValueError(f"Qwen-Image-Edit: cannot read {index}: {error}") from None
    if found not in PIPELINES:
        raise ValueError(f"Qwen-Image-Edit: {folder} holds _class_name {found!r} in {index}; expected "
                         f"{' or '.join(PIPELINES)} (QwenImageEditPlusPipeline is the 2509 release)")
    if plus is not None and PIPELINES[found] != plus:
        asked = ("model kind qwen_image_edit_plus (Qwen-Image-Edit-2509, QwenImageEditPlusPipeline)" if plus
                 else "Qwen-Image-Edit (QwenImageEditPipeline)")
        hint = "qwen_image_edit reads the release from the folder"
        raise ValueError(f"Qwen-Image-Edit: {folder} holds _class_name {found!r} ({index}), but {asked} was asked "
                         f"for; point model_path at the other release or use model = \"qwen_image_edit\" ({hint})")
    return PIPELINES[found]


def load_qwen_image_edit(path: str | os.PathLike | None, transformer_file: str | os.PathLike | None = None,
                         dtype: torch.dtype = torch.bfloat16, plus: bool | None = None) -> QwenImageEditModel:
    """Qwen-Image-Edit / -Edit-2509 from a local diffusers folder, optionally a single-file transformer.

    ``plus=None`` reads the release from ``model_index.json`` (``QwenImageEditPlusPipeline``
    is 2509); ``plus=True``/``False`` insists on one (see :func:`qwen_edit_release`).

    Raises:
        FileNotFoundError naming every place looked at; ValueError when the folder holds
        another pipeline than the one asked for.
    """
    with quiet_transformers():
        from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline, QwenImageTransformer2DModel

    folder = check_model_folder(path, "Qwen-Image-Edit", transformer_file)
    plus = qwen_edit_release(folder, plus)
    extra = {}
    if transformer_file is not None:
        extra["transformer"] = QwenImageTransformer2DModel.from_single_file(
            str(transformer_file), config=str(folder / "transformer"), torch_dtype=dtype, local_files_only=True)
    cls = QwenImageEditPlusPipeline if plus else QwenImageEditPipeline
    pipe = cls.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True, **extra)
    pipe.vae.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    text = _text_pipeline(pipe.text_encoder, pipe.processor, pipe.tokenizer, pipe.scheduler, plus)
    model = QwenImageEditModel(pipe.transformer, QwenVAECodec(pipe.vae), text, dict(pipe.scheduler.config), plus,
                               name=f"Qwen-Image-Edit{'-2509' if plus else ''} ({folder.name})")
    model.dtype = dtype
    return model


TINY_QWEN_SIZES = {
    # name: (layers, heads, head dim, rope axes)
    "test": (2, 2, 16, (8, 4, 4)),
    # Trained like the tiny Kontext's demo size, so as wide as its 192-channel tokens.
    "demo": (2, 8, 32, (8, 12, 12)),
}


def tiny_qwen_image_edit(seed: int = 0, plus: bool = False, codec: str = "patch", size: str = "demo") -> QwenImageEditModel:
    """A Qwen-Image-Edit(-Plus) with the real classes at toy sizes and random weights.

    ``codec="vae"`` uses a tiny random ``AutoencoderKLQwenImage``; ``"patch"`` the exact
    4×4 pixel-patch codec. ``size`` is a key of :data:`TINY_QWEN_SIZES`.
    """
    if size not in TINY_QWEN_SIZES:
        raise ValueError(f"tiny size {size!r}: expected one of {', '.join(TINY_QWEN_SIZES)}")
    layers, heads, head_dim, rope_axes = TINY_QWEN_SIZES[size]
    with quiet_transformers():
        from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel

    from .tiny import tiny_qwen_vl

    if codec == "patch":
        latent_codec = PatchCodec(4)
    elif codec == "vae":
        torch.manual_seed(seed + 1)
        vae = AutoencoderKLQwenImage(base_dim=4, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                     temperal_downsample=[False, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
        latent_codec = QwenVAECodec(vae.eval().requires_grad_(False))
    else:
        raise ValueError(f"tiny codec {codec!r}: expected 'patch' or 'vae'")
    text_width = 16
    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=latent_codec.channels * 4, out_channels=latent_codec.channels, num_layers=layers,
        attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=text_width, guidance_embeds=False,
        axes_dims_rope=rope_axes,
    )
    encoder, processor = tiny_qwen_vl(seed + 2, text_width)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    text = _text_pipeline(encoder.requires_grad_(False), processor, processor.tokenizer, scheduler, plus)
    return QwenImageEditModel(transformer, latent_codec, text, dict(scheduler.config), plus,
                              name=f"tiny Qwen-Image-Edit{'-Plus' if plus else ''} ({codec})")
