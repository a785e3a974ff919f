"""docs/configuration-reference.md is generated from the config schema and cannot go stale."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import yaml

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "config_reference.py"
PAGE = REPO / "docs" / "configuration-reference.md"


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("config_reference", TOOL)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["config_reference"] = module
    spec.loader.exec_module(module)
    return module


def test_the_committed_page_is_the_generated_one() -> None:
    assert PAGE.read_text(encoding="utf-8") == _tool().page(), (
        "docs/configuration-reference.md is stale: run `python tools/config_reference.py`"
    )


def test_every_top_level_key_of_config_yaml_is_in_the_reference() -> None:
    text = PAGE.read_text(encoding="utf-8")
    config = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    missing = [key for key in config if f"`{key}`" not in text]
    assert not missing, f"keys of config.yaml missing from the reference: {missing}"


def test_nested_keys_are_dotted_paths_and_maps_of_names_are_stars() -> None:
    text = PAGE.read_text(encoding="utf-8")
    for path in ("smoke_run.steps", "presets.paper.train.runtime", "datasets.*.paper.splits.*.fraction"):
        assert f"| `{path}` |" in text, path
    row = next(line for line in text.splitlines() if line.startswith("| `smoke_run.spacing` |"))
    assert "`1.0`" in row and "≥ 1, ≤ 8" in row and "voxel size" in row


def test_check_passes_on_a_fresh_page_and_fails_on_a_stale_one(tmp_path: Path, capsys) -> None:
    tool = _tool()
    page = tmp_path / "reference.md"
    assert tool.main(["--out", str(page)]) == 0
    assert tool.main(["--check", "--out", str(page)]) == 0
    page.write_text(page.read_text(encoding="utf-8").replace("minutes", "hours"), encoding="utf-8")
    capsys.readouterr()
    assert tool.main(["--check", "--out", str(page)]) == 1
    assert capsys.readouterr().err.strip() == (f"{page}: stale; regenerate it with `python tools/config_reference.py`")


def test_the_script_exits_1_in_one_line_when_the_page_is_stale(tmp_path: Path) -> None:
    stale = tmp_path / "stale.md"
    stale.write_text("# Configuration reference\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(TOOL), "--check", "--out", str(stale)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1 and "stale" in done.stderr
