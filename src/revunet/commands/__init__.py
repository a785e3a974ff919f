"""One module per `revunet` sub-command.

Each module defines ``register(commands)``, which adds its sub-parser and sets
``run`` to a function taking the parsed arguments and returning an exit code.
Keeping commands apart lets each workflow step grow without touching the others:
a new module here is picked up by :func:`command_modules` without further wiring.
"""

from __future__ import annotations

import pkgutil

# How `revunet --help` orders the commands: the order of the workflow's steps.
WORKFLOW_ORDER = (
    "cases",
    "fetch",
    "synth",
    "preprocess",
    "split",
    "models",
    "train",
    "infer",
    "evaluate",
    "export",
    "memory",
    "capacity",
    "tables",
    "figures",
)


def command_modules() -> list[str]:
    """Names of the command modules in this package, in workflow order (others last, sorted)."""
    found = {info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_")}
    ordered = [name for name in WORKFLOW_ORDER if name in found]
    return ordered + sorted(found - set(ordered))
