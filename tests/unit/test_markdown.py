"""The one Markdown table writer."""

import pytest

from reporting.markdown import markdown_table


def test_header_alignment_and_rows():
    lines = markdown_table(["name", "n", "x"], [["a", 1, "2.00"], ["b", 10, ""]])
    assert lines == ["| name | n | x |", "|---|---:|---:|", "| a | 1 | 2.00 |", "| b | 10 | |"]


def test_a_pipe_in_a_cell_is_escaped_and_left_columns_counted():
    lines = markdown_table(["source", "path", "v"], [["math/a|b", "p", 1]], left_columns=2)
    assert lines[1] == "|---|---|---:|"
    assert lines[2] == r"| math/a\|b | p | 1 |"


def test_a_row_of_the_wrong_width_is_refused():
    with pytest.raises(ValueError, match="row 0 has 2 cells, the header 3"):
        markdown_table(["a", "b", "c"], [[1, 2]])
