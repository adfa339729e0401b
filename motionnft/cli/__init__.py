"""The ``motionnft`` command line: ``flow``, ``reward``, ``demo``, ``backends``, ``eval``, ``judge``, ``lora``,
``mine``, ``train``, ``data synthetic`` and ``edit``.

One module per command family, each with ``add_<command>(commands)`` (its argparse parser) and
``command_<command>(args)`` (what it runs); :mod:`.options` holds the options several share.
Commands import the library lazily so that ``--help`` stays fast and light.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from .data import add_data
from .edit import add_edit
from .evaluate import add_eval, add_judge
from .flow import add_backends, add_flow
from .lora import add_lora
from .mine import add_mine
from .reward import add_demo, add_reward
from .train import add_train

__all__ = ["build_parser", "main"]

# The order of the listing in 'motionnft --help'.
_COMMANDS = (add_flow, add_reward, add_demo, add_eval, add_judge, add_lora, add_mine, add_train, add_data, add_edit,
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (OSError, ValueError, IndexError) as error:  # OSError: every file the user named (exists, folder, rights)
        print(f"motionnft {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"motionnft {args.command}: interrupted", file=sys.stderr)
        return 130
