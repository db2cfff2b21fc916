"""zoe_md_cell: any name in one cell of the report's Markdown tables, read back by a real GFM table parser
(markdown-it-py, pinned in requirements.txt through rich) as one cell holding what the name holds."""

import os
import sys

import pytest
from markdown_it import MarkdownIt

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "plugins", "filter"))

from zoe import zoe_md_cell  # noqa: E402


def cells(markdown):
    """The text of every cell of every row of the first table, as the parser reads them."""
    tokens = MarkdownIt("commonmark").enable("table").parse(markdown)
    rows, row = [], None
    for index, token in enumerate(tokens):
        if token.type == "tr_open":
            row = []
        elif token.type in ("th_open", "td_open"):
            inline = tokens[index + 1]
            row.append("".join(child.content for child in inline.children or []) if inline.type == "inline" else "")
        elif token.type == "tr_close":
            rows.append(row)
    return rows


NAMES = [
    ("plain", "users", "users"),
    ("pipe", "a|b", "a|b"),
    ("newline", "first\nsecond", "first\\nsecond"),
    ("crlf", "a\r\nb", "a\\nb"),
    ("pipe and newline", "pipe|table\nname", "pipe|table\\nname"),
    ("backslash before pipe", "a\\|b", "a\\|b"),
    ("html", "<b>x</b>", "<b>x</b>"),
    ("backticks", "a`b``c", "a`b``c"),
    ("empty", "", ""),
]


@pytest.mark.parametrize("code", [False, True], ids=["text", "code"])
@pytest.mark.parametrize("name, shown", [(n, s) for _, n, s in NAMES], ids=[i for i, _, _ in NAMES])
def test_a_name_stays_one_cell_and_reads_as_itself(name, shown, code):
    table = "| left | name | right |\n|---|---|---|\n| x | %s | y |\n" % zoe_md_cell(name, code=code)
    rows = cells(table)
    assert [len(r) for r in rows] == [3, 3], table
    assert rows[1][0] == "x" and rows[1][2] == "y"
    assert rows[1][1] == shown


def test_none_is_an_empty_cell():
    assert zoe_md_cell(None) == ""
