"""`revunet <command>`: one sub-command per workflow step.

Each command lives in its own module of :mod:`revunet.commands`; this module only
assembles the parser and dispatches.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from revunet import __version__
from revunet.commands import command_modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="revunet", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"revunet {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in command_modules():
        importlib.import_module(f"revunet.commands.{name}").register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
