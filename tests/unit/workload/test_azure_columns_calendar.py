"""The block reader of Azure traces (``azure_columns``) works out dates itself, from its own table of month lengths,
where the row reader asks ``datetime.strptime``. Found by mutation testing: a wrong length for one month (May given
32 days) passed every test, and a row dated a day past its month would then load as the next month's first day
instead of being refused by the row reader naming its line. Each month's last day reads as datetime reads it, and
the day after is left to the row reader."""

from __future__ import annotations

import calendar
from datetime import datetime, timezone

import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.workload import azure
from warmserve.workload.azure_columns import NotColumnar, read_columns

AZ = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
#: 2023 (Februaries of 28 days), 2024 (leap), 1900 (no leap: a century), 2000 (leap: a 400th year)
YEARS = (2023, 2024, 1900, 2000)


def _trace(tmp_path, cell: str):
    path = tmp_path / "t.csv"
    path.write_text(AZ + f"2023-11-16 18:00:00.5,10,2\n{cell},11,3\n")
    return str(path)


@pytest.mark.parametrize("year", YEARS)
def test_each_months_last_day_reads_as_datetime_reads_it(tmp_path, year):
    for month in range(1, 13):
        last = calendar.monthrange(year, month)[1]
        cell = f"{year:04d}-{month:02d}-{last:02d} 23:59:59.25"
        cols = read_columns(_trace(tmp_path, cell), azure.MAX_TOKENS)
        want = datetime(year, month, last, 23, 59, 59, tzinfo=timezone.utc).timestamp() + 0.25
        assert cols.t[1] == want, cell
        assert cols.cell(1) == cell


@pytest.mark.parametrize("year", YEARS)
def test_a_day_past_its_months_end_is_left_to_the_row_reader_which_refuses_it(tmp_path, year):
    for month in range(1, 13):
        cell = f"{year:04d}-{month:02d}-{calendar.monthrange(year, month)[1] + 1:02d} 00:00:00"
        path = _trace(tmp_path, cell)
        with pytest.raises(NotColumnar):
            read_columns(path, azure.MAX_TOKENS)
        with pytest.raises(InvalidArgumentError, match=f"line 3, column TIMESTAMP: '{cell}'"):
            azure._load.__wrapped__(path, "code")
