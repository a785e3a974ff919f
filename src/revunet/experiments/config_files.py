"""How the workflow's config documents combine: Snakemake's order, read by :mod:`revunet.documents`.

Snakemake reads ``config.yaml`` and each ``--configfile`` with PyYAML (YAML 1.1, where
``lr: 1e-4`` is the string ``"1e-4"``). The Snakefile rebuilds its ``config`` with
:func:`read_workflow_config`, so the workflow reads these files as every revunet command does.
Torch-free: Snakemake imports it on every parse.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from revunet.documents import read_document


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``override``; nested mappings merge, everything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_workflow_config(
    default: str | os.PathLike[str],
    configfiles: Sequence[str | os.PathLike[str]] = (),
    overrides: Mapping[str, Any] | None = None,
    replace: bool = False,
) -> dict[str, Any]:
    """The config as Snakemake assembles it: ``default`` (the Snakefile's ``configfile:``), then
    each ``--configfile``, then the ``--config`` ``overrides``, merged key by key (Snakemake's
    ``update_config``). With ``replace`` (``--replace-workflow-config``) and any of those,
    ``default`` is left out; a missing ``default`` counts as empty, as Snakemake allows when
    config files are given."""
    layers = [_document(path) for path in configfiles]
    if overrides:
        layers.append(overrides)
    config: dict[str, Any] = {}
    if os.path.exists(default) and not (replace and layers):
        config = _document(default)
    for layer in layers:
        config = deep_merge(config, layer)
    return config


def _document(path: str | os.PathLike[str]) -> dict[str, Any]:
    value = read_document(path)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"config file {path}: must be a mapping of config keys, got {type(value).__name__}")
    return dict(value)
