"""Print the shape of the package: modules over 450 lines, functions over 60, the top level.

Usage: ``python tools/code_shape.py [src/revunet]``; exits 1 when a limit is exceeded, so CI
can keep the shape the redesign left (see docs/architecture.md).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60
MAX_TOP_LEVEL_MODULES = 8


def functions(tree: ast.AST) -> list[tuple[str, int, int]]:
    """(qualified name, first line, length) of every function, methods and nested ones included."""
    found: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                found.append((prefix + child.name, start, (child.end_lineno or start) - start + 1))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return found


def main(root: str = "src/revunet") -> int:
    package = Path(root)
    problems = 0
    modules = sorted(package.rglob("*.py"))
    longest = max(len(p.read_text(encoding="utf-8").splitlines()) for p in modules)
    print(f"{len(modules)} modules; the longest has {longest} lines (limit {MAX_MODULE_LINES})")
    for path in modules:
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            problems += 1
            print(f"  module over {MAX_MODULE_LINES} lines: {path} ({lines})")
        for name, start, length in functions(ast.parse(text)):
            if length > MAX_FUNCTION_LINES:
                problems += 1
                print(f"  function over {MAX_FUNCTION_LINES} lines: {path}:{start} {name} ({length})")
    every = [length for p in modules for _, _, length in functions(ast.parse(p.read_text(encoding="utf-8")))]
    print(f"{len(every)} functions; the longest has {max(every)} lines (limit {MAX_FUNCTION_LINES})")
    top = sorted(p.name for p in package.glob("*.py"))
    print(f"{len(top)} modules at the top level (limit {MAX_TOP_LEVEL_MODULES}): {', '.join(top)}")
    problems += len(top) > MAX_TOP_LEVEL_MODULES
    packages = sorted(p.parent.name for p in package.glob("*/__init__.py"))
    print(f"{len(packages)} subpackages: {', '.join(packages)}")
    print("shape OK" if not problems else f"{problems} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
