"""A finished report table and its Markdown form: a title, a caption, and one formatted row per record.

Empty cells read "not run" unless the table names another text for the column; booleans read
yes/no; numbers follow the column's format spec, without a "-0.00".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

NOT_RUN = "not run"


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

    def markdown(self) -> str:
        """The bold title, the caption, then the header and one row per record."""
        columns = list(self.data.columns)
        header = [self.headers.get(c, c) for c in columns]
        lines = [f"**{self.title}**", "", self.caption, "", _md_row(header), _md_row(["---"] * len(columns))]
        for _, record in self.data.iterrows():
            lines.append(_md_row([self._cell(c, record[c]) for c in columns]))
        return "\n".join(lines) + "\n"

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


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
