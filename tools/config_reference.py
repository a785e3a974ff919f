"""Write docs/configuration-reference.md from workflow/schemas/config.schema.yaml, so it cannot drift.

Every key path of the workflow's configuration (nested keys as dotted paths, ``*`` for a map of
names such as ``datasets.*``) with its type, default, allowed values and description, then the
experiment fields of :class:`revunet.experiments.recipe.Experiment`, which the schema leaves to it.

Usage: ``python tools/config_reference.py`` writes the page (atomically);
``python tools/config_reference.py --check`` exits 1 with one line when the page is stale.
``--out FILE`` names another page (the tests check a copy).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from revunet.atomic import write_text_atomic
from revunet.documents import read_document
from revunet.experiments.recipe import KNOWN_NAMES, LEAST, Experiment

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
PAGE = REPO / "docs" / "configuration-reference.md"
SCHEMA_NAME = "workflow/schemas/config.schema.yaml"
TYPE_WORDS = {
    "string": "string",
    "number": "number",
    "integer": "integer",
    "boolean": "boolean",
    "array": "list",
    "object": "mapping",
    "null": "null",
}
BOUNDS = (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"))
HEADER = "| key | type | default | allowed | description |\n|---|---|---|---|---|"
MAX_DEPTH = 12

Schema = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Row:
    """One key of the reference: its dotted path and what the schema says about it."""

    path: str
    kind: str
    default: str
    allowed: str
    description: str

    def markdown(self, link: bool = False) -> str:
        """The table row; ``link`` makes the key a link to its own section (keys nested below it)."""
        key = f"[`{self.path}`](#{self.path})" if link else f"`{self.path}`"
        cells = (key, self.kind, self.default, self.allowed, self.description)
        return "| " + " | ".join(cell.replace("|", "\\|") or "—" for cell in cells) + " |"


# --------------------------------------------------------------------------- reading the schema


def resolve(node: Schema, root: Schema) -> dict[str, Any]:
    """``node`` with its ``$ref`` and ``allOf`` parts merged in: properties and ``required`` join,
    for any other keyword the node's own value wins over its parts'."""
    parts = [_target(node["$ref"], root)] if "$ref" in node else []
    parts += list(node.get("allOf", []))
    own = {key: value for key, value in node.items() if key not in ("$ref", "allOf")}
    merged: dict[str, Any] = {}
    for part in [*(resolve(part, root) for part in parts), own]:
        for key, value in part.items():
            if key == "properties":
                merged[key] = {**merged.get(key, {}), **value}
            elif key == "required":
                merged[key] = [*merged.get(key, []), *value]
            else:
                merged[key] = value
    return merged


def _target(reference: str, root: Schema) -> Schema:
    """The schema a local ``$ref`` (``#/$defs/name``) points to."""
    if not reference.startswith("#/"):
        raise ValueError(f"{SCHEMA_NAME}: only local $refs are supported, got {reference!r}")
    node: Any = root
    for part in reference[2:].split("/"):
        node = node[part]
    if not isinstance(node, Mapping):
        raise ValueError(f"{SCHEMA_NAME}: $ref {reference!r} is not a schema")
    return node


def rows(node: Schema, root: Schema, path: str = "", required: bool = False, depth: int = 0) -> Iterator[Row]:
    """The row of ``node`` at ``path`` (none for the root), then those of every key below it;
    ``required``: its parent requires the key."""
    if depth > MAX_DEPTH:
        raise ValueError(f"{SCHEMA_NAME}: keys nested deeper than {MAX_DEPTH} at {path} (a recursive $ref?)")
    schema = resolve(node, root)
    if path:
        notes = "; ".join(note for note in ("required" if required else "", allowed(schema)) if note)
        yield Row(path, kind(schema), default(schema), notes, description(schema))
    needed = set(schema.get("required", []))
    for name, child in schema.get("properties", {}).items():
        yield from rows(child, root, f"{path}.{name}" if path else name, name in needed, depth + 1)
    for child in name_maps(schema):
        yield from rows(child, root, f"{path}.*" if path else "*", False, depth + 1)


def name_maps(schema: Schema) -> list[Schema]:
    """The schemas of the values of a map of names (``additionalProperties``, ``patternProperties``)."""
    maps = [schema["additionalProperties"]] if isinstance(schema.get("additionalProperties"), Mapping) else []
    return maps + list(schema.get("patternProperties", {}).values())


# --------------------------------------------------------------------------- one key's cells


def kind(schema: Schema) -> str:
    """The key's type in words: ``integer``, ``string or null``, ``list of integer``, ``mapping``."""
    alternatives = [alternative for alternative in schema.get("oneOf", []) if "type" in alternative]
    if alternatives:
        return " or ".join(dict.fromkeys(kind(alternative) for alternative in alternatives))
    types = schema.get("type")
    if types is None and "enum" in schema:
        types = sorted({_json_type(value) for value in schema["enum"]})
    if types is None:
        has_keys = "properties" in schema or name_maps(schema)
        types = "object" if has_keys or schema.get("default") == {} else []
    words = [TYPE_WORDS[name] for name in ([types] if isinstance(types, str) else types)]
    if "array" in words or "list" in words:
        items = schema.get("items")
        item_kind = kind(items) if isinstance(items, Mapping) else ""
        words = [f"list of {item_kind}" if word == "list" and item_kind else word for word in words]
    return " or ".join(words)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "string"


def default(schema: Schema) -> str:
    """The schema's default, written as in config.yaml (flow style), or empty."""
    return f"`{_yaml(schema['default'])}`" if "default" in schema else ""


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value or '""'
    if isinstance(value, (int, float)):
        return str(value)
    return str(yaml.safe_dump(value, default_flow_style=True, width=1000)).strip()


def allowed(schema: Schema) -> str:
    """Allowed values, bounds, sizes and required keys, as one cell."""
    notes = _values(schema)
    items = schema.get("items")
    if isinstance(items, Mapping) and (item_notes := _values(items)):
        notes.append("each item " + ", ".join(item_notes))
    notes += _sizes(schema)
    choices = [alternative["required"] for alternative in schema.get("oneOf", []) if "required" in alternative]
    if choices:
        notes.append("exactly one of " + ", ".join(f"`{'`+`'.join(keys)}`" for keys in choices))
    return "; ".join(notes)


def _values(schema: Schema) -> list[str]:
    """The values one scalar may take: its enum and bounds, or those of each ``oneOf`` alternative."""
    notes = []
    if "enum" in schema:
        notes.append(", ".join(f"`{_yaml(value)}`" for value in schema["enum"]))
    notes += [f"{sign} {_yaml(schema[keyword])}" for keyword, sign in BOUNDS if keyword in schema]
    for alternative in schema.get("oneOf", []):
        if "type" in alternative:
            notes += _values(alternative)
    return [", ".join(notes)] if notes else []


def _sizes(schema: Schema) -> list[str]:
    low, high = schema.get("minItems"), schema.get("maxItems")
    notes = []
    if low is not None and low == high:
        notes.append(f"exactly {low} items")
    elif low is not None or high is not None:
        notes.append(f"{low or 0} to {high} items" if high is not None else f"at least {low} items")
    if schema.get("uniqueItems"):
        notes.append("no repeats")
    if schema.get("minProperties"):
        notes.append(f"at least {schema['minProperties']} entry")
    return notes


def description(schema: Schema) -> str:
    return " ".join(str(schema.get("description", "")).split())


# --------------------------------------------------------------------------- experiment fields

# The words for the annotations of Experiment's fields; a new annotation must be named here.
PYTHON_TYPES = {
    "str": "string",
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "dict[str, Any]": "mapping",
    "tuple[int, int, int]": "list of 3 integers",
    "tuple[int, ...]": "list of integer",
}


def experiment_rows() -> list[str]:
    """One table row per field of :class:`Experiment`: type, default and the values it may take."""
    lines = []
    for field in dataclasses.fields(Experiment):
        annotation = str(field.type)
        base = annotation.removesuffix(" | None")
        if base not in PYTHON_TYPES:
            raise ValueError(f"Experiment.{field.name}: no words for its type {annotation!r} (PYTHON_TYPES)")
        words = PYTHON_TYPES[base] + (" or null" if base != annotation else "")
        if field.default is not dataclasses.MISSING:
            value: Any = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            value = dataclasses.MISSING
        shown = "" if value is dataclasses.MISSING else f"`{_yaml(list(value) if isinstance(value, tuple) else value)}`"
        notes = [", ".join(f"`{name}`" for name in KNOWN_NAMES.get(field.name, ()))]
        notes.append(f"≥ {LEAST[field.name]}" if field.name in LEAST else "")
        cells = (f"`{field.name}`", words, shown, "; ".join(note for note in notes if note))
        lines.append("| " + " | ".join(cell or "—" for cell in cells) + " |")
    return lines


# --------------------------------------------------------------------------- the page

INTRO = """# Configuration reference

<!-- Generated by tools/config_reference.py from workflow/schemas/config.schema.yaml: do not edit by hand.
Change the schema (or revunet.experiments.recipe.Experiment), then run `python tools/config_reference.py`. -->

Every key the workflow's configuration accepts (`config.yaml`, each `--configfile` and `--config`),
as `workflow/schemas/config.schema.yaml` checks it when the workflow starts. How the files fit
together, the two presets and the ways to override a key: [Configuration](configuration.md).

Keys are dotted paths; `*` stands for a name you choose (a dataset, a split, a recipe, an
experiment). A key marked required must be given; any other may be left out, and a mapping
whose default is `{}` gets the defaults of its own keys. The page is generated from the schema
by `tools/config_reference.py`, and `python tools/config_reference.py --check` fails when it is
stale, so it says what the workflow checks."""

EXPERIMENT_INTRO = """## Experiment fields

Besides the workflow keys above (`recipe`, `dataset`, `split`, `resources`), an experiment
(`experiments.*`, its `demo` and `paper` blocks), a recipe (`recipes.*`) and a preset's
`presets.*.experiment` set fields of `revunet.experiments.recipe.Experiment`. They are checked
when the workflow starts: unknown keys, types, the names below and ranges (e.g. `lr` > 0,
`ema_alpha` in [0, 1), increasing `milestones`). `name` is the experiment's key; `task` is its
dataset's unless set.

| field | type | default | allowed |
|---|---|---|---|"""


def page(schema_path: Path = SCHEMA) -> str:
    """The whole reference page for the schema at ``schema_path``."""
    schema = read_document(schema_path)
    every = list(rows(schema, schema))
    top = [row for row in every if "." not in row.path]
    nested = {row.path: [below for below in every if below.path.startswith(f"{row.path}.")] for row in top}
    index = [row.markdown(link=bool(nested[row.path])) for row in top]
    blocks = [INTRO, "## Top-level keys\n\n" + "\n".join([HEADER, *index])]
    for row in top:
        if nested[row.path]:
            blocks.append(f"## {row.path}\n\n" + "\n".join([HEADER, *(below.markdown() for below in nested[row.path])]))
    blocks.append("\n".join([EXPERIMENT_INTRO, *experiment_rows()]))
    return "\n\n".join(blocks) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write (or --check) the configuration reference page.")
    parser.add_argument("--out", type=Path, default=PAGE, help="the page to write or check (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="exit 1 when the page differs from the schema's")
    args = parser.parse_args(argv)
    text = page()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else None
        if current != text:
            print(f"{args.out}: stale; regenerate it with `python tools/config_reference.py`", file=sys.stderr)
            return 1
        print(f"{args.out}: up to date")
        return 0
    write_text_atomic(args.out, text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
