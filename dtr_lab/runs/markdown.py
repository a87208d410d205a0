"""Markdown tables, written one way: every table of the analysis scripts (figure indexes, comparisons,
studies) goes through ``markdown_table``."""

from __future__ import annotations

import numpy as np
import pandas as pd


def markdown_table(frame: pd.DataFrame, digits: int = 4, tight_rule: bool = False) -> str:
    """A GitHub-markdown table of a frame's columns and rows, without a final newline: floats to ``digits``
    significant figures (NaN as "–"), anything else as ``str`` (so pre-formatted cells stay as they are).
    The rule under the header is ``| --- | --- |``, or ``|---|---|`` with ``tight_rule``."""

    def cell(v) -> str:
        if isinstance(v, (float, np.floating)):
            return "–" if np.isnan(v) else f"{v:.{digits}g}"
        return str(v)

    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rules = ["---"] * len(frame.columns)
    rule = "|" + "".join(r + "|" for r in rules) if tight_rule else "| " + " | ".join(rules) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def text_table(head: list[str], rows: list[list[str]], tight_rule: bool = True) -> str:
    """``markdown_table`` of rows of cells already written as text, with a final newline."""
    return markdown_table(pd.DataFrame(rows, columns=head, dtype=object), tight_rule=tight_rule) + "\n"
