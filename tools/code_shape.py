"""Print the shape of the package: modules over 450 lines, functions over 60, the top level, import cycles.

Usage: ``python tools/code_shape.py [src/revunet]``; exits 1 when a limit is exceeded or two
modules import each other (directly or round a longer loop, deferred imports inside functions
included: a deferred import hides a cycle, it does not remove it), so CI can keep the shape the
redesign left (see docs/architecture.md).
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


def module_name(path: Path, package: Path) -> str:
    """``revunet.a.b`` of ``src/revunet/a/b.py`` (a package's ``__init__.py`` is the package)."""
    parts = [package.name, *path.relative_to(package).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.AST, known: set[str]) -> set[str]:
    """The package's modules that ``tree`` imports anywhere, except under ``if TYPE_CHECKING:``."""
    found: set[str] = set()
    checking_only = {
        id(node)
        for branch in ast.walk(tree)
        if isinstance(branch, ast.If) and "TYPE_CHECKING" in ast.unparse(branch.test)
        for node in ast.walk(branch)
    }
    for node in ast.walk(tree):
        if id(node) in checking_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if name in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found & known


def import_cycles(package: Path) -> list[list[str]]:
    """Every set of modules that import one another round a loop (strongly connected, Tarjan)."""
    paths = {module_name(p, package): p for p in sorted(package.rglob("*.py"))}
    known = set(paths)
    graph = {
        name: sorted(imported_modules(ast.parse(p.read_text(encoding="utf-8")), known)) for name, p in paths.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        for other in graph[name]:
            if other not in index:
                visit(other)
                low[name] = min(low[name], low[other])
            elif other in stack:
                low[name] = min(low[name], index[other])
        if low[name] == index[name]:
            component = []
            while not component or component[-1] != name:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in graph:
        if name not in index:
            visit(name)
    return cycles


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
    cycles = import_cycles(package)
    for cycle in cycles:
        print(f"  import cycle: {' -> '.join(cycle)}")
    print(f"{len(cycles)} import cycles")
    problems += len(cycles)
    print("shape OK" if not problems else f"{problems} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
