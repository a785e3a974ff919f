"""Extract the code examples of the documentation, so tests can run or check every one of them.

The conventions (docs/development.md, "Examples are tests"):
- a ``python`` fence runs: all of one page's python fences, in order, in one fresh process;
- a ``bash`` fence is checked command by command (revunet's and Snakemake's own parsers, files
  that must exist, programs that are allowed); one preceded by ``<!-- docs-test: run -->`` also
  runs with ``bash -euo pipefail``.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
RUN_MARKER = "<!-- docs-test: run -->"
# Programs a bash example may name without a further check of its arguments.
ALLOWED_PROGRAMS = frozenset(
    "pip cd cp mv rm ls cat mkdir export sbatch squeue scancel sacct sinfo xdg-open open mkdocs "
    "torchrun nvidia-smi tail env git head wc grep du df tar "
    "nnUNetv2_plan_and_preprocess nnUNetv2_train nnUNetv2_predict".split()
)
_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[A-Za-z0-9_+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.S | re.M
)


@dataclass(frozen=True)
class Fence:
    """One fenced code block: its page, first line, language, text and whether it is marked to run."""

    page: Path
    line: int
    lang: str
    code: str
    run: bool

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def doc_pages() -> list[Path]:
    """Every Markdown page of the site, and the README (it is the site's front door too)."""
    return sorted(DOCS.rglob("*.md")) + [REPO / "README.md"]


def fences(page: Path) -> list[Fence]:
    """The fenced code blocks of ``page``, with the ``<!-- docs-test: run -->`` marker read."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip().splitlines()
        marked = bool(before) and before[-1].strip() == RUN_MARKER
        body = "\n".join(row[len(match["indent"]) :] for row in match["body"].splitlines())
        found.append(Fence(page, line, match["lang"].lower(), body, marked))
    return found


def shell_commands(code: str) -> list[list[str]]:
    """The commands of a shell fence as argument lists: continuations joined, comments dropped,
    ``VAR=value`` prefixes and ``&&``/``;``/``|`` chains split into separate commands."""
    joined = re.sub(r"\\\n", " ", code)
    commands: list[list[str]] = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        current: list[str] = []
        for word in words + [";"]:
            if word in {"&&", "||", ";", "|"}:
                while current and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", current[0]):
                    current.pop(0)
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(word)
    return commands
