"""The model a trainer configuration names, built the same way for training and for inference.

:func:`build_from_config` turns the model settings of a
:class:`~motionnft.training.settings.TrainConfig` (``model``, ``model_path``, ``transformer_file``,
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


def base_weights_state(model: EditModel) -> dict[str, torch.Tensor]:
    """Every weight of ``model``'s :meth:`~motionnft.models.EditModel.weight_modules`, keyed
    ``"<component>.<parameter>"``: what :func:`load_base_weights` reads back.

    The text encoders are stored too, so a base trained with seeded tiny encoders does
    not depend on how a later transformers release initialises them.
    """
    # clone: T5 ties its embedding to `shared`, and safetensors refuses shared storage
    return {f"{name}.{key}": value.detach().clone().contiguous()
            for name, module in model.weight_modules().items() for key, value in module.state_dict().items()}


def save_base_weights(model: EditModel, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write :func:`base_weights_state` as safetensors, atomically (temporary file + rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    save_file(base_weights_state(model), str(temporary), metadata=metadata)
    os.replace(temporary, path)
    return path


def load_base_weights(model: EditModel, path: str | os.PathLike | None) -> EditModel:
    """Load a safetensors base-weights file into ``model`` (nothing when ``path`` is empty).

    The file holds either the transformer's state dict alone, or components keyed
    ``"<component>.<parameter>"`` (:func:`save_base_weights`). Every key of each component
    present must match: a file of another model (or size) is refused.

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
    modules = model.weight_modules()
    if any(key.split(".", 1)[0] in modules for key in state):
        parts: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            component, _, name = key.partition(".")
            if component not in modules:
                raise ValueError(f"base_weights {file}: key {key!r} names no component of {model.name} "
                                 f"(expected {', '.join(modules)})")
            parts.setdefault(component, {})[name] = value
    else:
        parts = {"transformer": state}
    for component, part in parts.items():
        try:
            missing, unexpected = modules[component].load_state_dict(part, strict=False)
        except RuntimeError as error:  # size mismatches
            raise ValueError(f"base_weights {file}: {component} does not fit {model.name}: {error}") from None
        if missing or unexpected:
            raise ValueError(f"base_weights {file}: {len(missing)} missing and {len(unexpected)} unexpected "
                             f"{component} keys for {model.name} (e.g. {(list(missing) + list(unexpected))[:3]})")
    return model


def config_dtype(config) -> torch.dtype:
    """The transformer dtype a configuration trains in: bfloat16 for ``mixed_precision = "bf16"``, else float32."""
    return torch.bfloat16 if config.mixed_precision == "bf16" else torch.float32


def build_from_config(config, dtype: torch.dtype | None = None) -> EditModel:
    """The model ``config`` names, with its ``base_weights`` loaded; on the CPU, not yet moved.

    Args:
        config: a :class:`~motionnft.training.settings.TrainConfig` (any object with its model fields).
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
