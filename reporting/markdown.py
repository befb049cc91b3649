"""One Markdown table writer for every table the project prints or commits (evaluation, benchmarks, the memory
plan)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]], left_columns: int = 1) -> list[str]:
    """The lines of a Markdown table: the header, the alignment row, one line per row.

    The first `left_columns` columns are left-aligned, the others right-aligned (numbers). Cells are written with
    `str`, a `|` in them escaped so that it cannot end its cell; an empty cell is written as one space. A row
    with a different number of cells than `headers` raises ValueError.
    """

    def line(cells: Sequence[object]) -> str:
        texts = [str(c).replace("|", "\\|") for c in cells]
        return "|" + "|".join(f" {t} " if t else " " for t in texts) + "|"

    align = ["---" if i < left_columns else "---:" for i in range(len(headers))]
    lines = [line(headers), "|" + "|".join(align) + "|"]
    for number, row in enumerate(rows):
        if len(row) != len(headers):
            raise ValueError(f"markdown_table: row {number} has {len(row)} cells, the header {len(headers)}")
        lines.append(line(row))
    return lines
