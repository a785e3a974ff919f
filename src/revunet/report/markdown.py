"""A finished report table and its Markdown form: a title, a caption, and one formatted row per record.

Empty cells read "not run" unless the table names another text for the column; booleans read
yes/no; numbers follow the column's format spec, without a "-0.00".

A table too wide to read in a terminal names its views (:class:`TableView`): the columns a reader
compares, at most :data:`MAX_VIEW_COLUMNS` each, its identifying columns repeated in every one.
Its Markdown is then the title and caption once, then per view a bold title, a one-sentence
caption and the view's sub-table; its CSV keeps every column (``revunet tables`` writes one CSV
per view besides). Every column is in some view, unless the table states its single value in the
caption (``constants``).

Snakemake's HTML report shows each CSV it lists with a caption in reStructuredText:
:meth:`ReportTable.report_caption` is the same text as the Markdown's (the table's title and
caption, then the view's), escaped for reStructuredText and for the Jinja2 templating the
report applies to captions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

NOT_RUN = "not run"
MAX_VIEW_COLUMNS = 10


@dataclass(frozen=True)
class TableView:
    """The columns of a table a reader compares: a short name (in file names), a one-sentence caption."""

    name: str
    caption: str
    columns: tuple[str, ...]

    @property
    def title(self) -> str:
        """The name as a heading: ``lesion_wise`` reads "Lesion-wise"."""
        return self.name.replace("_", "-").capitalize()


@dataclass
class ReportTable:
    """A finished table: numbers for the CSV, formats and headers for the Markdown, and its caption."""

    name: str
    title: str
    caption: str
    data: pd.DataFrame
    formats: dict[str, str] = field(default_factory=dict)  # column -> format spec for the Markdown
    headers: dict[str, str] = field(default_factory=dict)  # column -> Markdown header
    missing: dict[str, str] = field(default_factory=dict)  # column -> text of an empty cell (default "not run")
    views: list[TableView] = field(default_factory=list)  # none: the Markdown is one table of every column
    constants: tuple[str, ...] = ()  # columns in no view: one value in every row, which the caption states

    def __post_init__(self) -> None:
        check_views(self.name, list(self.data.columns), self.views)
        columns = set(self.data.columns)
        for column in self.constants:
            if column not in columns:
                raise ValueError(f"table {self.name}: constant column {column!r} is not a column of the table")
            if self.data[column].nunique(dropna=False) > 1:
                raise ValueError(f"table {self.name}: column {column!r} is not constant, so it belongs in a view")
        shown = {column for view in self.views for column in view.columns} | set(self.constants)
        unshown = [column for column in self.data.columns if column not in shown]
        if self.views and unshown:
            raise ValueError(f"table {self.name}: columns {unshown} are in no view")

    def view_title(self, view: TableView) -> str:
        """The title of one view's own file: the table's title and the view's."""
        return f"{self.title} — {view.title}"

    def view_caption(self, view: TableView) -> str:
        """The caption of one view's own file: the table's caption followed by the view's."""
        return f"{self.caption} {view.caption}"

    def markdown(self) -> str:
        """The bold title, the caption, then the table, or per view its bold title, caption and sub-table."""
        lines = [f"**{self.title}**", "", self.caption, ""]
        if not self.views:
            return "\n".join([*lines, *self._rows(list(self.data.columns))]) + "\n"
        for view in self.views:
            lines += [f"**{view.title}**", "", view.caption, "", *self._rows(list(view.columns)), ""]
        return "\n".join(lines[:-1]) + "\n"

    def report_caption(self, view: TableView | None = None) -> str:
        """The caption of the table's CSV (or of one view's) in Snakemake's report: the Markdown's text, bold
        title and caption of the table (then of the view), without the table itself."""
        paragraphs = [f"**{rst_text(self.title)}**", rst_text(self.caption)]
        if view is not None:
            paragraphs += [f"**{rst_text(view.title)}**", rst_text(view.caption)]
        return rst_caption(paragraphs)

    def _rows(self, columns: list[str]) -> list[str]:
        """The header, the rule and one formatted row per record of ``columns``."""
        header = [self.headers.get(c, c) for c in columns]
        lines = [_md_row(header), _md_row(["---"] * len(columns))]
        for _, record in self.data.iterrows():
            lines.append(_md_row([self._cell(c, record[c]) for c in columns]))
        return lines

    def _cell(self, column: str, value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value == "":
            return self.missing.get(column, NOT_RUN)
        if isinstance(value, (bool, np.bool_)):
            return "yes" if value else "no"
        spec = self.formats.get(column)
        if spec and isinstance(value, (int, float, np.integer, np.floating)):
            text = format(float(value), spec)
            return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00"
        return str(value)


def check_views(table: str, columns: Sequence[str], views: Sequence[TableView]) -> None:
    """ValueError for a view of ``table`` over :data:`MAX_VIEW_COLUMNS` columns, naming an unknown or
    repeated column, or sharing its name with another view."""
    known = set(columns)
    names = [view.name for view in views]
    if len(set(names)) < len(names):
        raise ValueError(f"table {table}: two views share a name: {names}")
    for view in views:
        if not view.name or not view.name.replace("_", "").isalnum():
            raise ValueError(f"table {table}: view name {view.name!r} is not a word (letters, digits, _)")
        if not view.columns or len(view.columns) > MAX_VIEW_COLUMNS:
            raise ValueError(
                f"table {table}: view {view.name!r} has {len(view.columns)} columns, not 1 to {MAX_VIEW_COLUMNS}"
            )
        unknown = [column for column in view.columns if column not in known]
        if unknown:
            raise ValueError(f"table {table}: view {view.name!r} names unknown columns {unknown}")
        if len(set(view.columns)) < len(view.columns):
            raise ValueError(f"table {table}: view {view.name!r} names a column twice: {list(view.columns)}")


def rst_caption(paragraphs: Sequence[str]) -> str:
    """reStructuredText paragraphs as a caption of Snakemake's report: inside a Jinja2 raw block, which the
    report renders before reStructuredText."""
    return "{% raw %}\n" + "\n\n".join(paragraphs) + "\n{% endraw %}\n"


def rst_text(text: str) -> str:
    """One paragraph of Markdown as reStructuredText: `code` becomes ``code``, every other markup character
    is escaped (it reads as itself)."""
    pieces = text.replace("\n", " ").split("`")
    if len(pieces) % 2 == 0:  # an unmatched backtick: it and the text after it stay plain
        pieces[-2:] = [pieces[-2] + "`" + pieces[-1]]
    rst = "".join(f"``{piece}``" if i % 2 else _RST_SPECIAL.sub(r"\\\g<0>", piece) for i, piece in enumerate(pieces))
    if rst and (rst[0] in "-+#.:0123456789(" or rst.startswith(".. ")):
        rst = "\\" + rst  # never a list, an enumeration, a field or a directive
    return rst


_RST_SPECIAL = re.compile(r"[\\*_|`\[\]<>]")


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
