"""Reading YAML and JSON documents the same way everywhere (commands, recipes, the workflow).

PyYAML implements YAML 1.1, which reads ``1e-4`` (an exponent without a dot) as the string
``"1e-4"``; users write learning rates that way, and JSON writes ``1e-05``. The loader here
reads them, and ``1E-4`` and ``.5``, as numbers, as YAML 1.2 does. JSON is tried first
(it is a subset of YAML, and its parser is exact about its own numbers).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml


class DocumentError(ValueError):
    """A document that is not valid YAML or JSON; the message names its source."""


class _Yaml12NumbersLoader(yaml.SafeLoader):
    """SafeLoader that reads YAML 1.2's float forms (``1e-4``, ``1E-4``, ``.5``) as numbers."""


_Yaml12NumbersLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)
# An integer literal (``3``) must stay an int: the float resolver above would also match it,
# so the int resolver, registered first on the base class, keeps precedence for digits only.


def parse_document(text: str, source: str) -> Any:
    """The value of a YAML or JSON document; ``source`` names it in errors."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return yaml.load(text, Loader=_Yaml12NumbersLoader)
    except yaml.YAMLError as error:
        raise DocumentError(f"{source}: not valid YAML/JSON: {error}") from None


_NULLS = ("null", "Null", "NULL", "~")


def read_scalar(text: str) -> Any:
    """``text`` as this reader reads an unquoted YAML scalar: ``1e-4`` and ``3`` are numbers,
    ``true`` is a boolean, ``null`` is None; any other text (a path, a name, something that
    would read as a list or mapping) stays the string. For values that arrive as text, such as
    Snakemake's ``--config``, which reads nested values with every scalar a string."""
    try:
        value = yaml.load(text, Loader=_Yaml12NumbersLoader)
    except yaml.YAMLError:
        return text
    if value is None:
        return None if text.strip() in _NULLS else text
    return value if isinstance(value, (bool, int, float)) else text


def read_document(path: str | os.PathLike[str]) -> Any:
    """The value of the YAML or JSON file at ``path`` (FileNotFoundError naming it if absent)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {path}") from None
    return parse_document(text, str(path))
