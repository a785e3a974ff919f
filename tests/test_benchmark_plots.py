"""The benchmark figures: every results CSV draws into one PNG, and the benchmark pages show existing images.

``benchmarks/plot_results.py`` turns ``benchmarks/results/*.csv`` into ``docs/images/benchmarks/*.png``;
the pages under ``docs/benchmarks/`` link those images. These tests keep the three in step.
"""

from __future__ import annotations

import csv
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
IMAGES = REPO / "docs" / "images" / "benchmarks"
PAGES = sorted((REPO / "docs" / "benchmarks").glob("*.md"))
IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+)")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def plot_results() -> ModuleType:
    spec = importlib.util.spec_from_file_location("plot_results", REPO / "benchmarks" / "plot_results.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("plot_results", module)
    spec.loader.exec_module(module)
    return module


def _sources() -> list[Path]:
    return sorted(RESULTS.glob("*.csv"))


def _png_chunks(data: bytes) -> list[str]:
    """The chunk types of a PNG file, in order (length, type, data, CRC after the signature)."""
    types, offset = [], len(PNG_SIGNATURE)
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        types.append(data[offset + 4 : offset + 8].decode("ascii"))
        offset += 12 + length
    return types


def _image_links(page: Path) -> list[str]:
    return IMAGE_LINK.findall(page.read_text(encoding="utf-8"))


def test_there_are_results_and_pages() -> None:
    assert _sources(), "benchmarks/results/ holds no CSV"
    assert PAGES, "docs/benchmarks/ holds no page"


@pytest.mark.parametrize("source", _sources(), ids=lambda path: path.name)
def test_every_csv_starts_with_a_plain_header(source: Path) -> None:
    first = source.read_text(encoding="utf-8").splitlines()[0]
    assert not first.startswith("#"), f"{source.name}: the first line must be the header, not a comment"
    with source.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert len(rows) > 1, f"{source.name}: a header and no numbers"
    assert all(len(row) == len(rows[0]) for row in rows), f"{source.name}: rows of unequal length"


def test_the_script_writes_one_png_per_csv(plot_results: ModuleType, tmp_path: Path) -> None:
    assert plot_results.main(["--results", str(RESULTS), "--out", str(tmp_path)]) == 0
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == [f"{source.stem}.png" for source in _sources()]
    for path in tmp_path.iterdir():
        assert path.read_bytes().startswith(PNG_SIGNATURE), f"{path.name} is not a PNG"
        varying = {"tEXt", "iTXt", "zTXt", "tIME"} & set(_png_chunks(path.read_bytes()))
        assert not varying, f"{path.name} holds {sorted(varying)} chunks (software version, timestamp)"


def test_drawing_is_deterministic(plot_results: ModuleType, tmp_path: Path) -> None:
    source = _sources()[0]
    first = plot_results.draw(source, tmp_path).read_bytes()
    assert plot_results.draw(source, tmp_path).read_bytes() == first


def test_a_csv_without_a_figure_is_refused(plot_results: ModuleType, tmp_path: Path) -> None:
    stray = tmp_path / "no-such-figure.csv"
    stray.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no figure is defined"):
        plot_results.draw(stray, tmp_path)


def test_every_committed_figure_has_its_csv() -> None:
    committed = sorted(path.stem for path in IMAGES.glob("*.png"))
    assert committed == [source.stem for source in _sources()]


@pytest.mark.parametrize("page", PAGES, ids=lambda path: path.name)
def test_image_links_point_to_existing_files(page: Path) -> None:
    for link in _image_links(page):
        assert not link.startswith(("http:", "https:", "/")), f"{page.name}: {link} is not a relative link"
        target = (page.parent / link).resolve()
        assert target.is_file(), f"{page.name}: image {link} does not exist"


def test_every_figure_is_shown_on_a_page() -> None:
    shown = {(page.parent / link).resolve() for page in PAGES for link in _image_links(page)}
    missing = [path.name for path in sorted(IMAGES.glob("*.png")) if path.resolve() not in shown]
    assert not missing, f"figures no page shows: {missing}"
