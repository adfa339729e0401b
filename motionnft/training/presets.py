"""Settings from a dataclass, named presets in TOML files and ``--set KEY=VALUE`` overrides.

Generic: any trainer whose settings are one dataclass of plain fields (``bool``, ``int``,
``float``, ``str``, ``list``) uses :func:`load_settings`. The dataclass is the only place
a setting and its default are written; a preset file holds ``[preset.NAME]`` tables of
the settings a preset changes, and every key of every table is checked against the
dataclass (an unknown key is refused with the list of valid ones, a value of the wrong
type with the type expected).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from pathlib import Path
from typing import Any, TypeVar

Settings = TypeVar("Settings")

EXPECTED = {bool: "a boolean (true or false)", int: "an integer", float: "a number",
            list: 'a list (a TOML array, e.g. ["to_q", "to_k"])', str: "a string"}


def toml_module():
    """``tomllib`` (Python >= 3.11) or its backport ``tomli``."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    return tomllib


def setting_names(settings_class) -> list[str]:
    return [f.name for f in dataclasses.fields(settings_class)]


def setting_type(value) -> type:
    """The type a setting takes, from its default value (bool before int: True is an int)."""
    return next((kind for kind in (bool, int, float, list) if isinstance(value, kind)), str)


def fits(value, kind: type) -> bool:
    if kind in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


def did_you_mean(name: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` to a mistyped ``name``, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_setting(settings_class, key: str, where: str) -> ValueError:
    names = setting_names(settings_class)
    return ValueError(f"{where}: unknown setting {key!r}{did_you_mean(key, names)}; the settings are: "
                      f"{', '.join(names)}")


def apply_settings(settings, values: dict, where: str) -> None:
    """Set ``values`` (``{name: value}``) on the dataclass instance ``settings``, each checked
    against the type of the setting (an int is a valid float; stored as a float)."""
    names = set(setting_names(type(settings)))
    for key, value in values.items():
        if key not in names:
            raise unknown_setting(type(settings), key, where)
        kind = setting_type(getattr(settings, key))
        if not fits(value, kind):
            raise ValueError(f"{where}: {key} = {value!r}: expected {EXPECTED[kind]}")
        setattr(settings, key, float(value) if kind is float else value)


def parse_override(settings_class, text: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` -> (key, value), VALUE read as the type of the setting KEY.

    VALUE is TOML: numbers, ``true``/``false``, ``"strings"``, ``[lists]``. A string
    setting also takes a bare word (``model=tiny_flux_kontext``,
    ``judge_url=http://127.0.0.1:8000/v1``); an integer is a valid number.

    Raises:
        ValueError naming the setting, the value and the type expected: an unknown setting,
        or a value that is not valid TOML of the setting's type (e.g. ``max_steps=1O``,
        ``beta=.5``, ``lora_targets=[to_q``, ``model_path="/unterminated``).
    """
    if "=" not in text:
        raise ValueError(f"override {text!r}: expected KEY=VALUE")
    key, raw = (part.strip() for part in text.split("=", 1))
    if key not in setting_names(settings_class):
        raise unknown_setting(settings_class, key, f"--set {key}={raw}")
    kind = setting_type(getattr(settings_class(), key))
    try:
        value, valid = toml_module().loads(f"v = {raw}")["v"], True
    except Exception:
        value, valid = None, False
    if kind is str:
        if valid and isinstance(value, str):
            return key, value
        if raw and raw[0] not in "\"'[{" and "\n" not in raw:  # a bare word
            return key, raw
        raise ValueError(f"--set {key}={raw}: {key} expects a string: \"...\" (TOML) or a bare word")
    if valid and fits(value, kind):
        return key, float(value) if kind is float else value
    why = f"{raw!r} is not valid TOML" if not valid else f"got {type(value).__name__} {value!r}"
    raise ValueError(f"--set {key}={raw}: {key} expects {EXPECTED[kind]}; {why}")


def read_presets(path: str | os.PathLike) -> dict[str, dict]:
    """The ``[preset.NAME]`` tables of a shipped preset file; it holds nothing else."""
    path = Path(path)
    shipped = read_toml(path)
    extra = sorted(set(shipped) - {"preset"})
    if extra:
        raise ValueError(f"{path}: only [preset.NAME] tables belong here (defaults are the settings class's), "
                         f"found {', '.join(extra)}")
    return dict(shipped.get("preset", {}))


def read_toml(path: Path) -> dict:
    """The tables of the TOML file ``path``.

    Raises:
        ValueError naming the file (and the line TOML's reader gives) when it is not valid TOML.
    """
    try:
        return toml_module().loads(path.read_text())
    except ValueError as error:  # tomllib.TOMLDecodeError / tomli's: the message has the line, not the file
        raise ValueError(f"{path}: not valid TOML ({error})") from None


def load_settings(settings_class: type[Settings], presets_file: str | os.PathLike, preset: str | None = None,
                  config_file: str | os.PathLike | None = None,
                  overrides: list[str] | dict | None = None) -> Settings:
    """The class's defaults, then ``[preset.NAME]`` of ``presets_file`` (or of the user's file),
    then the user's ``config_file`` (a flat table of settings, optionally with a
    ``[defaults]`` table and ``[preset.*]`` tables of its own), then ``overrides``
    (``KEY=VALUE`` strings as :func:`parse_override` reads them, or a ``{name: value}`` dict)."""
    settings = settings_class()
    presets = read_presets(presets_file)
    user = {}
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        user = read_toml(path)
        presets.update(user.pop("preset", {}))
    for name, table in presets.items():  # every preset, used or not: a typo is found when it is written
        apply_settings(settings_class(), table, f"preset {name}")
    if preset is not None:
        if preset not in presets:
            raise ValueError(f"unknown preset {preset!r}{did_you_mean(preset, presets)}: expected one of "
                             f"{', '.join(sorted(presets))}")
        apply_settings(settings, presets[preset], f"preset {preset}")
    apply_settings(settings, user.get("defaults", {}), str(config_file))
    apply_settings(settings, {k: v for k, v in user.items() if k != "defaults"}, str(config_file))
    if isinstance(overrides, dict):
        apply_settings(settings, overrides, "overrides")
    else:
        apply_settings(settings, dict(parse_override(settings_class, o) for o in overrides or []), "--set")
    return settings


def settings_to_toml(settings, title: str) -> str:
    """Every setting as ``name = value`` (JSON values are valid TOML for these types)."""
    lines = [f"# {title}"]
    for f in dataclasses.fields(settings):
        lines.append(f"{f.name} = {json.dumps(getattr(settings, f.name))}")
    return "\n".join(lines) + "\n"
