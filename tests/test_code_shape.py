"""The code-shape tool finds import cycles, deferred ones included, and the package has none."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("code_shape", REPO / "tools" / "code_shape.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["code_shape"] = module
    spec.loader.exec_module(module)
    return module


def test_a_deferred_import_that_closes_a_loop_is_a_cycle(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import helper\n")
    (package / "b.py").write_text("def helper():\n    from pkg import a  # deferred, still a loop\n")
    (package / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import helper\nimport pkg.b\n"
    )
    assert _tool().import_cycles(package) == [["pkg.a", "pkg.b"]]


def test_the_package_has_no_import_cycle() -> None:
    assert _tool().import_cycles(REPO / "src" / "revunet") == []
