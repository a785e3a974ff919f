"""Every example of the documentation runs or is checked, so the docs cannot go stale.

Python fences run (one process per page); bash fences are checked against revunet's and
Snakemake's own argument parsers and the repository's files, and run where marked. The
conventions are in docs/development.md; the extraction in ``tests/docs_examples.py``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from docs_examples import ALLOWED_PROGRAMS, REPO, Fence, doc_pages, fences, shell_commands

PAGES = doc_pages()
SHELLS = {"bash", "sh", "shell"}


def _page_id(page: Path) -> str:
    return str(page.relative_to(REPO))


@functools.cache
def _config_keys() -> frozenset[str]:
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text(encoding="utf-8"))
    return frozenset(schema["properties"])


def _parses(parser_factory, args: list[str], where: str) -> None:
    """``args`` parse with the parser ``parser_factory`` builds; argparse's own message otherwise."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parser_factory().parse_args(args)
    except SystemExit as stop:
        if stop.code not in (0, None):  # --help and --version exit 0
            pytest.fail(f"{where}: `{' '.join(args)}` does not parse:\n{stderr.getvalue().strip()}")


def _check_snakemake(args: list[str], where: str) -> None:
    from snakemake.cli import get_argument_parser

    _parses(get_argument_parser, args, where)
    known = _config_keys()
    for i, word in enumerate(args):
        if word in {"--profile", "--configfile", "--configfiles"} and i + 1 < len(args):
            path = args[i + 1]
            if not Path(path).is_absolute() and not path.startswith("$") and "my-lab" not in path:
                assert (REPO / path).exists(), f"{where}: {word} {path} does not exist in the repository"
    if "--config" in args:
        for item in args[args.index("--config") + 1 :]:
            if item.startswith("-"):
                break
            key = item.split("=", 1)[0]
            assert key in known, f"{where}: --config {key}=… is not a key of the config schema ({sorted(known)})"


def _check_command(words: list[str], where: str) -> None:
    """One shell command of an example: its program is known and its arguments are valid."""
    program, args = words[0], words[1:]
    if program in {".venv/bin/snakemake", "snakemake"}:
        _check_snakemake(args, where)
    elif program in {".venv/bin/revunet", "revunet"}:
        from revunet.cli import build_parser

        _parses(build_parser, args, where)
    elif program in {"bash", "python", "python3", ".venv/bin/python", "source", "."}:
        files = [a for a in args if not a.startswith("-")]
        if args[:2] == ["-m", "pytest"]:
            files = [a for a in args[2:] if not a.startswith("-") and "/" in a]
        elif args[:1] == ["-m"] or args[:1] == ["-c"]:
            files = []
        for name in files[:1]:
            path = name.split("::")[0]
            assert (REPO / path).exists() or Path(path).is_absolute(), f"{where}: {program} {name}: no such file"
    else:
        assert program in ALLOWED_PROGRAMS, (
            f"{where}: `{program}` is neither checked nor allowed (tests/docs_examples.py)"
        )


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_shell_examples_are_valid_commands(page: Path) -> None:
    for fence in fences(page):
        if fence.lang in SHELLS:
            for words in shell_commands(fence.code):
                _check_command(words, fence.where)


def _run_python(blocks: list[Fence], workdir: Path) -> subprocess.CompletedProcess[str]:
    script = "\n\n".join(f"# {fence.where}\n{fence.code}" for fence in blocks)
    env = {**os.environ, "REVUNET_REPO": str(REPO), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("page", [p for p in PAGES if any(f.lang == "python" for f in fences(p))], ids=_page_id)
def test_python_examples_run(page: Path, tmp_path: Path) -> None:
    blocks = [fence for fence in fences(page) if fence.lang == "python"]
    done = _run_python(blocks, tmp_path)
    assert done.returncode == 0, (
        f"{_page_id(page)}'s python examples failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}"
    )


@pytest.mark.parametrize("page", [p for p in PAGES if any(f.run and f.lang in SHELLS for f in fences(p))], ids=_page_id)
def test_marked_shell_examples_run(page: Path, tmp_path: Path) -> None:
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "REVUNET_REPO": str(REPO), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    for fence in fences(page):
        if fence.run and fence.lang in SHELLS:
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", fence.code],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert done.returncode == 0, f"{fence.where} failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}"


def test_the_extraction_sees_what_it_must() -> None:
    """The checker itself: a marked fence is read as run, chains and continuations split, bad flags fail."""
    sample = REPO / "tests" / "data" / "docs_sample.md"
    found = fences(sample)
    assert [(f.lang, f.run) for f in found] == [("python", False), ("bash", True), ("text", False)]
    assert shell_commands("A=1 revunet --version && \\\n  snakemake -n # note\n") == [
        ["revunet", "--version"],
        ["snakemake", "-n"],
    ]
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        _check_command(["revunet", "memory", "--no-such-flag"], "sample")
    with pytest.raises(AssertionError, match="not a key of the config schema"):
        _check_command(["snakemake", "--cores", "1", "--config", "no_such_key=1"], "sample")
    with pytest.raises(AssertionError, match="neither checked nor allowed"):
        _check_command(["curl", "https://example.org"], "sample")
