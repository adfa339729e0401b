"""The ``motionnft`` command line: ``flow``, ``reward``, ``demo``, ``backends``, ``eval``, ``judge``, ``lora``,
``mine``, ``train``, ``data synthetic``, ``edit``, ``guide``, ``drag``, ``train-drag``, ``animate``, ``train-animation`` and ``eval-animation``.

One module per command family, each with ``add_<command>(commands)`` (its argparse parser) and
``command_<command>(args)`` (what it runs); :mod:`.options` holds the options several share.
Commands import the library lazily so that ``--help`` stays fast and light.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from .animate import add_animate, add_eval_animation, add_train_animation
from .data import add_data
from .edit import add_edit
from .evaluate import add_eval, add_judge
from .flow import add_backends, add_flow
from .drag import add_drag, add_train_drag
from .guide import add_guide
from .lora import add_lora
from .mine import add_mine
from .reward import add_demo, add_reward
from .train import add_train

__all__ = ["build_parser", "main"]

# The order of the listing in 'motionnft --help'.
_COMMANDS = (add_flow, add_reward, add_demo, add_eval, add_judge, add_lora, add_mine, add_train, add_data, add_edit,
             add_guide, add_drag, add_train_drag, add_animate, add_train_animation, add_eval_animation,
             add_backends)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="motionnft",
        description="Motion-centric image editing tools: optical flow and the MotionNFT motion reward.",
    )
    parser.add_argument("--version", action="version", version=f"motionnft {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        add(commands)
    return parser


def check_outputs(args) -> None:
    """Refuse, before any work, the outputs a command declares (``set_defaults(output_files=...,
    output_folders=..., input_files=...)``, as argument names; ``positionals`` names those given without a flag) that cannot be written: a file
    where a folder is expected or the reverse, a path under a file, a link to nowhere, an output
    file that is one of the inputs. The message names the option and the path given."""
    from ..files import check_not_an_input, check_output_file, check_output_folder

    inputs = [value for name in getattr(args, "input_files", ()) for value in _as_list(getattr(args, name, None))]
    for name, check in [(n, check_output_file) for n in getattr(args, "output_files", ())] + \
                       [(n, check_output_folder) for n in getattr(args, "output_folders", ())]:
        value = getattr(args, name, None)
        if value is None:
            continue
        option = name.upper() if name in getattr(args, "positionals", ()) else "--" + name.replace("_", "-")
        try:
            check(value)
        except OSError as error:
            raise type(error)(f"{option} {error}") from None
        if check is check_output_file:
            check_not_an_input(value, inputs, option)


def _show_warnings_as(prefix: str) -> None:
    """Library warnings (a truncated video, ...) as one line each, like the errors."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{prefix}: warning: {message}", file=file or sys.stderr)

    warnings.showwarning = show


def _as_list(value) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _show_warnings_as(f"motionnft {args.command}")
    try:
        check_outputs(args)
        return args.handler(args)
    except (OSError, ValueError, IndexError) as error:  # OSError: every file the user named (exists, folder, rights)
        print(f"motionnft {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"motionnft {args.command}: interrupted", file=sys.stderr)
        return 130
