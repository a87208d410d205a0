"""The one markdown table writer (dtr_lab.runs.markdown)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dtr_lab.runs.markdown import markdown_table, text_table


def test_markdown_table_of_a_tiny_frame():
    frame = pd.DataFrame({"run": ["a", "b"], "loss": [0.123456, np.nan], "steps": [10, 20]})
    assert markdown_table(frame) == (
        "| run | loss | steps |\n| --- | --- | --- |\n| a | 0.1235 | 10 |\n| b | – | 20 |"
    )
    tight = markdown_table(frame, digits=2, tight_rule=True)
    assert tight.splitlines()[1:3] == ["|---|---|---|", "| a | 0.12 | 10 |"]


def test_text_table_keeps_cells_as_written():
    head = ["comparison (b − a)", "pairs", "Δ"]
    text = text_table(head, [["DTR − vanilla", "3", "-4.60 [-6.00, -1.00]*"], ["R-TR", "1", "+1.00"]])
    assert text == (
        "| comparison (b − a) | pairs | Δ |\n|---|---|---|\n"
        "| DTR − vanilla | 3 | -4.60 [-6.00, -1.00]* |\n| R-TR | 1 | +1.00 |\n"
    )
    assert text_table(["a", "b"], []) == "| a | b |\n|---|---|\n"
