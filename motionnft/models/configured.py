"""The model a trainer configuration names, built the same way for training and for inference.

:func:`build_from_config` turns the model settings of a
:class:`~motionnft.train.TrainConfig` (``model``, ``model_path``, ``transformer_file``,
``base_weights``, ``tiny_size``, ``tiny_codec``, ``guidance``, ``max_sequence_length``,
``seed``, ``mixed_precision``) into an :class:`~motionnft.models.EditModel`, including
the ``base_weights`` state dict the configuration names. The trainer and ``motionnft
edit --model tiny`` both go through it, so the LoRA of a ``tiny`` run is evaluated on
exactly the base it was trained from::

    from motionnft.train import load_config
    from motionnft.models.configured import build_from_config
    model = build_from_config(load_config("tiny"))

Path convention for ``base_weights``: an absolute path (``~`` expanded) is used as is; a
relative one is looked up, first found, in

1. the current working directory,
2. the folder of the shipped configuration (``motionnft/configs/``, where the presets
   are written),
3. the package folder (``motionnft/``),

so a preset can name a file shipped with the package (``base_weights =
"tiny_base.safetensors"`` next to ``train.toml``, or ``"../weights/tiny.safetensors"``)
and a user can name a file of their own. A missing file is an error naming every place
looked at.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from . import build_model
from .base import EditModel

PACKAGE_DIR = Path(__file__).resolve().parent.parent
CONFIG_DIR = PACKAGE_DIR / "configs"


def base_weights_candidates(path: str | os.PathLike) -> list[Path]:
    """Where a ``base_weights`` value is looked for, in order (see the module docstring)."""
    given = Path(path).expanduser()
    if given.is_absolute():
        return [given]
    return [Path.cwd() / given, CONFIG_DIR / given, PACKAGE_DIR / given]


def resolve_base_weights(path: str | os.PathLike) -> Path:
    """The file a ``base_weights`` value names.

    Raises:
        FileNotFoundError naming every place looked at.
    """
    candidates = base_weights_candidates(path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"base_weights {str(path)!r}: file not found; looked for {', '.join(str(c) for c in candidates)}"
    )


def load_base_weights(model: EditModel, path: str | os.PathLike | None) -> EditModel:
    """Load a safetensors state dict into ``model.transformer`` (nothing when ``path`` is empty).

    Every key must match: a file of another model (or size) is refused.

    Raises:
        FileNotFoundError (see :func:`resolve_base_weights`), ValueError on missing or
        unexpected keys or on shapes that do not fit.
    """
    if not path:
        return model
    from safetensors.torch import load_file

    file = resolve_base_weights(path)
    try:
        state = load_file(str(file))
    except Exception as error:  # noqa: BLE001 - any failure to read means "not a weights file"
        raise ValueError(f"base_weights {file}: not a readable safetensors file ({error})") from None
    try:
        missing, unexpected = model.transformer.load_state_dict(state, strict=False)
    except RuntimeError as error:  # size mismatches
        raise ValueError(f"base_weights {file}: does not fit {model.name}: {error}") from None
    if missing or unexpected:
        raise ValueError(f"base_weights {file}: {len(missing)} missing and {len(unexpected)} unexpected keys "
                         f"for {model.name} (e.g. {(list(missing) + list(unexpected))[:3]})")
    return model


def config_dtype(config) -> torch.dtype:
    """The transformer dtype a configuration trains in: bfloat16 for ``mixed_precision = "bf16"``, else float32."""
    return torch.bfloat16 if config.mixed_precision == "bf16" else torch.float32


def build_from_config(config, dtype: torch.dtype | None = None) -> EditModel:
    """The model ``config`` names, with its ``base_weights`` loaded; on the CPU, not yet moved.

    Args:
        config: a :class:`~motionnft.train.TrainConfig` (any object with its model fields).
        dtype: the dtype real models are loaded in; default :func:`config_dtype`.
    """
    dtype = config_dtype(config) if dtype is None else dtype
    model = build_model(
        config.model, path=config.model_path or None, transformer_file=config.transformer_file or None, dtype=dtype,
        seed=config.seed, tiny_size=config.tiny_size, tiny_codec=config.tiny_codec,
        guidance=None if config.guidance < 0 else config.guidance,
        max_sequence_length=config.max_sequence_length or None,
    )
    return load_base_weights(model, config.base_weights)
