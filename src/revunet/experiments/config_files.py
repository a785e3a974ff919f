"""The workflow's config at start: its documents read and merged, checked against the schema.

Snakemake reads ``config.yaml`` and each ``--configfile`` with PyYAML (YAML 1.1, where
``lr: 1e-4`` is the string ``"1e-4"``), merges them key by key, and reads every scalar
nested in a ``--config`` value as a string. The Snakefile rebuilds its ``config`` with
:func:`read_workflow_config`, so the workflow reads these values as every revunet command
does and merges them by :func:`merge_config`'s rule, then checks it with :func:`check_config`,
which fills in the schema's defaults and reports problems in a few lines naming the key path.
Torch-free: Snakemake imports it on every parse.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from revunet.documents import DocumentError, read_document, read_scalar

# The places (``*``: any name) where a key chooses between alternatives (see merge_config):
# a split draws its cases by `fraction` (with an optional `validation` share) or by `counts`; a
# dataset's `source` says whether its `path` (a local copy) applies.
SPLIT_SCHEMES = {"fraction": frozenset({"counts"}), "counts": frozenset({"fraction", "validation"})}
SPLIT_AT = ("datasets", "*", "*", "splits", "*")
DATASET_AT = ("datasets", "*", "*")
# A config error lists this many problems, then how many more there are.
MAX_PROBLEMS = 4


class ConfigError(ValueError):
    """A problem in the workflow configuration; the message names the key."""


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``override``; nested mappings merge, everything else (lists too) is replaced."""
    return _merge(base, override, None)


def merge_config(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """How a later config document overrides an earlier one: as :func:`deep_merge`, except where
    a key chooses between alternatives. A split's ``fraction`` and ``counts`` exclude each other,
    so an override naming one drops the other (``counts`` drops a ``validation`` share too); a dataset whose override changes its ``source``
    drops the inherited ``path`` (a local copy's folder) unless the override gives one."""
    return _merge(base, override, ())


def _merge(base: Mapping[str, Any], override: Mapping[str, Any], where: tuple[str, ...] | None) -> dict[str, Any]:
    merged = dict(base)
    if where is not None:
        for key in _superseded(where, base, override):
            merged.pop(key, None)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value, None if where is None else (*where, str(key)))
        else:
            merged[key] = value
    return merged


def _superseded(where: tuple[str, ...], base: Mapping[str, Any], override: Mapping[str, Any]) -> set[str]:
    """The keys of ``base`` that ``override`` replaces by naming an alternative to them."""
    if _at(where, SPLIT_AT):
        return {key for scheme in set(SPLIT_SCHEMES) & set(override) for key in SPLIT_SCHEMES[scheme]} - set(override)
    if _at(where, DATASET_AT) and "source" in override and "path" not in override:
        return {"path"} if override["source"] != base.get("source") else set()
    return set()


def _at(where: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    return len(where) == len(pattern) and all(p in ("*", w) for w, p in zip(where, pattern, strict=True))


def read_workflow_config(
    default: str | os.PathLike[str],
    configfiles: Sequence[str | os.PathLike[str]] = (),
    overrides: Mapping[str, Any] | None = None,
    replace: bool = False,
) -> dict[str, Any]:
    """The config as Snakemake assembles it: ``default`` (the Snakefile's ``configfile:``), then
    each ``--configfile``, then the ``--config`` ``overrides`` (their text values read as
    :func:`revunet.documents.read_scalar` reads them), merged by :func:`merge_config`. With
    ``replace`` (``--replace-workflow-config``) and any of those, ``default`` is left out; a
    missing ``default`` counts as empty, as Snakemake allows when config files are given."""
    layers = [_document(path) for path in configfiles]
    if overrides:
        layers.append(_scalars_read(overrides))
    config: dict[str, Any] = {}
    if os.path.exists(default) and not (replace and layers):
        config = _document(default)
    for layer in layers:
        config = merge_config(config, layer)
    return config


def _scalars_read(value: Any) -> Any:
    """``value`` with every string in it (not the keys) read as a YAML scalar."""
    if isinstance(value, str):
        return read_scalar(value)
    if isinstance(value, Mapping):
        return {key: _scalars_read(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scalars_read(item) for item in value]
    return value


def _document(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        value = read_document(path)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: no such file") from None
    except DocumentError as error:
        raise ConfigError(f"config file {error}") from None
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"config file {path}: must be a mapping of config keys, got {type(value).__name__}")
    return dict(value)


# --------------------------------------------------------------------------- the schema


def check_config(config: Mapping[str, Any], schema_path: str | os.PathLike[str]) -> dict[str, Any]:
    """A copy of ``config`` with the schema's defaults filled in, or a :class:`ConfigError` of at
    most five lines, one per problem: the key path, what it must be, what it got."""
    import jsonschema  # Snakemake's own dependency; imported here to keep `import plan` light

    schema = read_document(schema_path)
    filled = copy.deepcopy(dict(config))
    validator = _filling_defaults(jsonschema.Draft202012Validator)(schema)
    problems = list(dict.fromkeys(_describe(error) for error in validator.iter_errors(filled)))
    if problems:
        more = len(problems) - MAX_PROBLEMS
        tail = [f"... and {more} more problem(s)"] if more > 0 else []
        raise ConfigError("\n".join(problems[:MAX_PROBLEMS] + tail))
    return filled


def _filling_defaults(validator_class: Any) -> Any:
    """A validator that sets each missing property that has a ``default``, as Snakemake's
    ``validate`` does, before validating it."""
    from jsonschema import validators

    check_properties = validator_class.VALIDATORS["properties"]

    def properties(validator: Any, properties: Mapping[str, Any], instance: Any, schema: Any) -> Iterator[Any]:
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from check_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": properties})


TYPE_NAMES = {
    "number": "a number",
    "integer": "an integer",
    "string": "a string",
    "array": "a list",
    "object": "a mapping",
    "boolean": "true or false",
    "null": "null",
}
BOUNDS = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}


def _describe(error: Any) -> str:
    """One line for a jsonschema error: ``config: <key path> must be <expected>, got <value>``."""
    from jsonschema.exceptions import best_match

    path = _key_path(error.absolute_path)
    where = f"config: {path}" if path else "config"
    kind, expected, got = error.validator, error.validator_value, error.instance
    if kind == "oneOf" and all(set(branch) == {"required"} for branch in expected):
        if not isinstance(got, Mapping):  # the same line as the type error, which it joins
            return f"{where} must be a mapping, got {_short(got)}"
        names = [name for branch in expected for name in branch["required"]]
        given = [name for name in names if name in got]
        return f"{where}: give exactly one of {' or '.join(map(repr, names))}, got {_given(given)}"
    if kind in ("oneOf", "anyOf") and error.context:
        return _describe(best_match(error.context))
    if kind == "additionalProperties":
        unknown = sorted(set(got) - set(error.schema.get("properties", {})))
        return f"{where}: unknown key(s) {unknown}; known: {sorted(error.schema.get('properties', {}))}"
    if kind == "required":
        return f"{where}: missing key(s) {[name for name in expected if name not in got]}"
    if kind == "type":
        kinds = [expected] if isinstance(expected, str) else expected
        return f"{where} must be {' or '.join(TYPE_NAMES.get(k, k) for k in kinds)}, got {_short(got)}"
    if kind == "enum":
        return f"{where} must be one of {expected}, got {_short(got)}"
    if kind in BOUNDS:
        return f"{where} must be a number {BOUNDS[kind]} {expected}, got {_short(got)}"
    if kind in ("minItems", "maxItems"):
        count = len(got)
        if error.schema.get("minItems") == error.schema.get("maxItems"):
            return f"{where} must be a list of {expected} items, got {count}: {_short(got)}"
        bound = "at least" if kind == "minItems" else "at most"
        return f"{where} must have {bound} {expected} item(s), got {count}: {_short(got)}"
    if kind == "minProperties":
        return f"{where} must have at least {expected} entry(ies), got {_short(got)}"
    return f"{where}: {_clip(error.message, 160)}"


def _key_path(path: Sequence[Any]) -> str:
    """``datasets.brats.paper.splits.pendse``; list items as ``select[0]``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def _given(names: list[str]) -> str:
    return "neither" if not names else "both" if len(names) > 1 else repr(names[0])


def _short(value: Any) -> str:
    return _clip(repr(value), 80)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def expect_mapping(value: Any, where: str) -> Mapping[str, Any]:
    """``value`` as a mapping (None: empty); anything else is a ConfigError naming ``where``."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"config: {where} must be a mapping, got {value!r}")
    return value


def expect_choice(value: Any, choices: tuple[str, ...], where: str) -> str:
    """``value`` if it is one of ``choices``; else a ConfigError naming ``where``."""
    if value not in choices:
        raise ConfigError(f"config: {where} must be one of {list(choices)}, got {value!r}")
    return value
