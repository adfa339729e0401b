"""LoRA files for FLUX.1 Kontext and Qwen-Image(-Edit): read every common layout, write one.

A LoRA adds ``scale · B·A`` to a linear weight ``W`` of shape ``(out, in)``, with ``A``
("down", ``(rank, in)``), ``B`` ("up", ``(out, rank)``) and ``scale = alpha / rank``.
Trainers store the same thing under many key layouts and disagree on where alpha lives:

===============  ==========================================================  ===================
layout           keys (module ``M``)                                         alpha
===============  ==========================================================  ===================
``motionnft``    this project's files (``save_lora``)                        ``M.alpha`` tensors
``peft``         ``base_model.model.M.lora_A[.default].weight``              ``adapter_config.json``
``diffusers``    ``transformer.M.lora_A.weight`` (also the official          ``M.alpha`` if any,
                 MotionEdit ``adapter_model_converted.safetensors``)         else none (scale 1)
``kohya``        ``lora_unet_<M with _>.lora_down.weight`` (kohya, musubi)   ``M.alpha``
``ai-toolkit``   ``diffusion_model.M.lora_A.weight``                         ``M.alpha`` if any
``bare``         ``M.lora_A.weight`` (PEFT state dicts of a bare model)      none / given
===============  ==========================================================  ===================

(plus ``onetrainer`` ``lora_transformer_<M with _>`` and ``lycoris`` ``lycoris_<M with _>``).
Each layout is one row of :data:`~motionnft.lora.layouts.LAYOUTS`, with a reader and a writer.

``M`` is either a diffusers module name (``transformer_blocks.3.attn.to_q``) or, for Flux,
a Black Forest Labs name (``double_blocks.3.img_attn.qkv``), whose fused q/k/v (and the
single blocks' q/k/v/mlp ``linear1``) are split here into the diffusers modules: the
fused ``A`` is shared and ``B`` is cut into row blocks, which is exact.

Everything is normalised to :class:`LoraWeights`: canonical keys are the diffusers module
names inside the transformer, without prefix. :func:`save_lora` writes the one layout that
both ComfyUI (0.3.64 and 0.8.0, stock ``LoraLoaderModelOnly``) and diffusers
(``load_lora_weights``) apply at ``alpha / rank``: Flux ``transformer.M`` + ``M.alpha``,
Qwen-Image ``diffusion_model.M`` + ``M.alpha`` (diffusers would double a ``transformer.``
prefix on a Qwen file that carries alpha tensors).

Modules: ``names`` (module names per base), ``weights`` (the dataclasses), ``detect`` (which
base), ``layouts`` (the key layouts), ``read`` (state dict -> LoRA), ``export`` (LoRA ->
state dict), ``files`` (load / save), ``merge`` (into a model's weights).
"""

from .detect import FLUX_DOUBLE_BLOCKS, base_from_metadata, detect_base
from .export import export_prefix, export_state_dict, training_metadata
from .files import (
    PEFT_CONFIG_FILE,
    PEFT_WEIGHT_FILES,
    find_lora_file,
    load_lora,
    read_adapter_config,
    read_safetensors,
    save_lora,
)
from .layouts import FORMAT_KEY, FORMAT_VERSION, LAYOUTS, Layout, layout_key
from .merge import merge_lora
from .names import (
    ATTENTION_MODULES,
    BASE_NAMES,
    BASES,
    BFL_DOUBLE,
    BFL_SINGLE,
    BFL_TOP,
    FLUX_DOUBLE,
    FLUX_SINGLE,
    FLUX_TOP,
    QWEN_BLOCK,
    QWEN_TOP,
    canonical_module_names,
    is_canonical_module,
)
from .read import lora_from_peft_state_dict, lora_from_state_dict
from .weights import (
    NO_ALPHA,
    OFFICIAL_RELEASE_ALPHA,
    OFFICIAL_RELEASE_RANK,
    LoraModule,
    LoraWeights,
    most_common_alpha,
)

__all__ = [
    "ATTENTION_MODULES",
    "BASES",
    "BASE_NAMES",
    "BFL_DOUBLE",
    "BFL_SINGLE",
    "BFL_TOP",
    "FLUX_DOUBLE",
    "FLUX_DOUBLE_BLOCKS",
    "FLUX_SINGLE",
    "FLUX_TOP",
    "FORMAT_KEY",
    "FORMAT_VERSION",
    "LAYOUTS",
    "Layout",
    "LoraModule",
    "LoraWeights",
    "NO_ALPHA",
    "OFFICIAL_RELEASE_ALPHA",
    "OFFICIAL_RELEASE_RANK",
    "PEFT_CONFIG_FILE",
    "PEFT_WEIGHT_FILES",
    "QWEN_BLOCK",
    "QWEN_TOP",
    "base_from_metadata",
    "canonical_module_names",
    "detect_base",
    "export_prefix",
    "export_state_dict",
    "find_lora_file",
    "is_canonical_module",
    "layout_key",
    "load_lora",
    "lora_from_peft_state_dict",
    "lora_from_state_dict",
    "merge_lora",
    "most_common_alpha",
    "read_adapter_config",
    "read_safetensors",
    "save_lora",
    "training_metadata",
]
