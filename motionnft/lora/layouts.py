"""The key layouts LoRA files come in, as one table of readers and writers.

A key is ``<stem><suffix>``: the suffix names the part (``down`` = A, ``up`` = B, ``alpha``)
and is recognised the same way in every layout; the stem is a layout's prefix plus the
module name, dotted or flattened with ``_``. Each :class:`Layout` row has one reader (stem ->
module name) and one writer (canonical module name, part -> key). Reading asks the rows in
table order, so the catch-all ``bare`` comes last; writing asks the row of the layout wanted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

# (suffix of a key, part); longest first so ".lora_A.default.weight" wins over ".weight" forms.
_SUFFIXES = (
    (".lora_A.default.weight", "down"), (".lora_B.default.weight", "up"),
    (".lora_linear_layer.down.weight", "down"), (".lora_linear_layer.up.weight", "up"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".lora_down.weight", "down"), (".lora_up.weight", "up"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),
    (".alpha", "alpha"),
)
TEXT_ENCODER_PREFIXES = ("lora_te", "text_encoder", "te_", "te1_", "te2_", "text_encoders.")
DORA_SUFFIXES = (".dora_scale", ".lora_magnitude_vector", ".lora_magnitude_vector.weight")

FORMAT_KEY = "motionnft.lora_format"
"""Header key of this project's files: it, not the keys, tells the ``motionnft`` layout apart."""
FORMAT_VERSION = "1"

Reader = Callable[[str], "tuple[str, bool] | None"]
"""Key stem -> ``(module name, flattened with "_")``, or None when the stem is not this layout's."""
Writer = Callable[[str, str, str], "str | None"]
"""``(canonical module name, part, base)`` -> key, or None where the layout keeps no such tensor."""


@dataclass(frozen=True)
class Layout:
    name: str
    prefix: str | None
    """What every key starts with (None: it depends on the base, or there is none)."""
    read: Reader | None
    """None: the layout's keys are another's, told apart otherwise."""
    write: Writer
    alpha: str
    """Where the layout keeps alpha (for people)."""


_AB = (".lora_A.weight", ".lora_B.weight")
_DOWN_UP = (".lora_down.weight", ".lora_up.weight")


def _prefix_reader(prefix: str, flat: bool = False) -> Reader:
    def read(stem: str):
        return (stem[len(prefix):], flat) if stem.startswith(prefix) else None
    return read


def _key_writer(prefix: str, flat: bool = False, suffixes: tuple[str, str] = _AB, alpha: bool = True) -> Writer:
    def write(name: str, part: str, base: str):
        if part == "alpha" and not alpha:
            return None
        stem = prefix + (name.replace(".", "_") if flat else name)
        return stem + {"down": suffixes[0], "up": suffixes[1], "alpha": ".alpha"}[part]
    return write


def _read_peft(stem: str):
    if not stem.startswith("base_model.model."):
        return None
    rest = stem[len("base_model.model."):]
    for inner in ("transformer.", "diffusion_model."):  # PEFT around a pipeline-less model may keep one
        if rest.startswith(inner):
            rest = rest[len(inner):]
    return rest, False


def _read_bare(stem: str):
    return stem, False


def written_layout(base: str) -> str:
    """The layout this project's files use for ``base``: the one both ComfyUI versions and
    diffusers apply at alpha / rank (diffusers would double a ``transformer.`` prefix on a
    Qwen-Image file that carries alpha tensors)."""
    return "diffusers" if base == "flux" else "ai-toolkit"


def _write_motionnft(name: str, part: str, base: str):
    return LAYOUTS[written_layout(base)].write(name, part, base)


def _prefixed(name: str, prefix: str, alpha: str, flat: bool = False, suffixes: tuple[str, str] = _AB) -> Layout:
    return Layout(name, prefix, _prefix_reader(prefix, flat), _key_writer(prefix, flat, suffixes), alpha)


LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (
    Layout("motionnft", None, None, _write_motionnft, "M.alpha tensors, header key " + FORMAT_KEY),
    Layout("peft", "base_model.model.", _read_peft, _key_writer("base_model.model.", alpha=False),
           "adapter_config.json"),
    _prefixed("diffusers", "transformer.", "M.alpha if any"),
    _prefixed("ai-toolkit", "diffusion_model.", "M.alpha if any"),
    _prefixed("kohya", "lora_unet_", "M.alpha", flat=True, suffixes=_DOWN_UP),
    _prefixed("onetrainer", "lora_transformer_", "M.alpha", flat=True, suffixes=_DOWN_UP),
    _prefixed("lycoris", "lycoris_", "M.alpha", flat=True, suffixes=_DOWN_UP),
    Layout("bare", None, _read_bare, _key_writer("", alpha=False), "none (PEFT state dicts) / given"),
)}
"""Every layout by name, in reading order (``bare`` matches any stem, so it is last)."""


def split_key(key: str) -> tuple[str, str] | None:
    """``<stem><suffix>`` -> ``(stem, part)`` with part ``down``, ``up`` or ``alpha``; None if no LoRA part."""
    for suffix, part in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    return None


def read_stem(stem: str) -> tuple[str, str, bool]:
    """``(module name, layout, flattened)`` of a key stem, from the first layout that reads it."""
    for layout in LAYOUTS.values():
        found = layout.read(stem) if layout.read is not None else None
        if found is not None:
            return found[0], layout.name, found[1]
    raise AssertionError("the bare layout reads every stem")


def file_layout(key_counts: dict[str, int], metadata: dict[str, str]) -> str:
    """The layout of a file: this project's by its header key, else the one most keys are in."""
    if FORMAT_KEY in metadata:
        return "motionnft"
    return max(key_counts, key=key_counts.get) if key_counts else "bare"


def layout_key(layout: str, name: str, part: str, base: str) -> str | None:
    """The key ``layout`` stores ``part`` of canonical module ``name`` under (None: not stored)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    return LAYOUTS[layout].write(name, part, base)
