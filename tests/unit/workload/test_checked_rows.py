"""``data.checked_rows``, the loaders' fast row reader, gives what DictReader and ``check_row`` give: the same cells
by column, the same line numbers, the same refusals."""

import csv
import io

import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.workload.data import check_row, checked_rows

COLS = ("model", "t_s", "rate")


def _both(text: str, need=COLS):
    """(DictReader's rows with check_row, checked_rows' rows as dicts), each row with its line number."""
    slow = csv.DictReader(io.StringIO(text))
    want = []
    for r in slow:
        check_row("f.csv", slow, r, need, "test file", "fix it")
        want.append((slow.line_num, {k: v for k, v in r.items() if k is not None}))
    fast = csv.DictReader(io.StringIO(text))
    assert fast.fieldnames
    got = [(fast.line_num, dict(zip(fast.fieldnames, r))) for r in checked_rows("f.csv", fast, need, "test", "fix")]
    return want, got


def test_rows_and_lines_match_dictreader():
    # blank lines skipped, a quoted cell over two lines (the next row's number moves by two), a repeated column
    # (its last cell wins)
    want, got = _both('model,t_s,rate,t_s\na,0,1.5,60\n\nb,600,"2\n",1200\nc,1,2,3\n')
    assert got == want
    assert [n for n, _ in got] == [2, 5, 6]
    assert got[1][1]["t_s"] == "1200" and got[1][1]["rate"] == "2\n"
    # a short row whose missing cells are not needed: None, as DictReader pads it
    want, got = _both("model,t_s,rate\nc,1200\n", need=("model", "t_s"))
    assert got == want == [(2, {"model": "c", "t_s": "1200", "rate": None})]


@pytest.mark.parametrize("text, match", [
    ("model,t_s,rate\na,0,1,9\n", "line 2: 4 cells, the header has 3"),
    ("model,t_s,rate\na,0,1\nb,600\n", "line 3: no rate cell"),
    ("model,t_s,rate,t_s\nc,1200,3\n", "line 2: no t_s cell"),  # DictReader pads the repeated t_s with None
    ("model,t_s,rate\na,0,1\n\nb\udcff,600,1\n", "line 4, column model: .* not UTF-8"),
])
def test_refusals_match_check_row(text, match):
    for how in ("slow", "fast"):
        with pytest.raises(InvalidArgumentError, match=match):
            if how == "slow":
                _both(text)
            else:
                fast = csv.DictReader(io.StringIO(text))
                assert fast.fieldnames
                list(checked_rows("f.csv", fast, COLS, "test", "fix"))
