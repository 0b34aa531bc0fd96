"""Found in review: ``load_azure`` read the whole file into one string and kept six lists of Python objects per row
(1 M rows: 8.5 s, 707 MB; the week-long 2024 code trace would need about 11 GB). It now reads blocks column-wise
into arrays, and reads the file row by row, as before, only where the block reader meets something it does not
read the same (a bad row: the row reader names its line)."""

from __future__ import annotations

import gzip
import logging
import os
import tracemalloc
from datetime import datetime, timezone

import numpy as np
import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.workload import azure
from warmserve.workload.data import data_path

AZ = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
START = datetime(2023, 11, 16, 18, 0, 0, tzinfo=timezone.utc)


def _rows(n: int):
    """n rows a few ms apart: (TIMESTAMP cell, its seconds from the first as float("0." + fraction) reads it)."""
    for i in range(n):
        whole, frac = i // 1000, f"{i % 1000:03d}{i % 7}000"
        d = datetime.fromtimestamp(START.timestamp() + whole, timezone.utc)
        yield (f"{d:%Y-%m-%d %H:%M:%S}.{frac}", START.timestamp() + whole + float("0." + frac),
               f"{i % 9000},{i % 500}")


def _write(path, n: int) -> np.ndarray:
    want = []
    with open(path, "w") as f:
        f.write(AZ)
        for cell, t, counts in _rows(n):
            f.write(f"{cell},{counts}\n")
            want.append(t)
    want = np.array(want)
    return want - want.min()


def test_loading_holds_a_few_times_the_file_not_python_objects_per_row(tmp_path):
    path = tmp_path / "big.csv"
    want = _write(path, 250_000)
    size = os.path.getsize(path)
    tracemalloc.start()
    try:
        t = azure._load.__wrapped__(str(path), "code")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * size, f"loading a {size / 1e6:.1f} MB trace peaked at {peak / 1e6:.1f} MB traced"
    assert len(t) == 250_000 and np.array_equal(t.arrival_s, want)
    assert t.prompt_tokens[-1] == 249_999 % 9000 and t.output_tokens[-1] == 249_999 % 500


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_blocks_cut_anywhere_read_as_the_row_reader_reads(tmp_path, monkeypatch, caplog, eol):
    lines = AZ.strip().split("\n") + [f"{c},{k}" for c, _, k in _rows(300)]
    lines[40:40] = ["", lines[30]]  # a blank line and a repeated row, both said by line
    lines.append("2024-11-16 18:15:46.5,1,1")  # a year late: the gap warning names its cell
    path = tmp_path / "t.csv"
    path.write_bytes((eol.join(lines) + eol).encode())
    with caplog.at_level(logging.WARNING, "warmserve.workload"):
        rows = azure._load_rows(str(path), "code")
        said = caplog.messages[:]
        caplog.clear()
        for chunk in (5, 64, 1000, 1 << 20):
            monkeypatch.setattr(azure.azure_columns, "CHUNK_BYTES", chunk)
            got = azure._load.__wrapped__(str(path), "code")
            for col in ("arrival_s", "model", "prompt_tokens", "output_tokens"):
                assert np.array_equal(getattr(got, col), getattr(rows, col)), (chunk, col)
            assert caplog.messages == said, chunk
            caplog.clear()
    assert any("lines 31 and 42 are alike" in m for m in said)
    assert any("2024-11-16 18:15:46.5" in m and "line" in m for m in said)


def test_the_published_traces_read_as_the_row_reader_reads():
    for kind in azure.KINDS:
        path = data_path(f"azure2023_AzureLLMInferenceTrace_{kind}.csv.gz")
        cols = azure.azure_columns.read_columns(path, azure.MAX_TOKENS)  # the block reader takes the file itself
        got, rows = azure._load.__wrapped__(path, kind), azure._load_rows(path, kind)
        assert len(cols.t) == len(got) > 8000
        for col in ("arrival_s", "prompt_tokens", "output_tokens"):
            assert np.array_equal(getattr(got, col), getattr(rows, col)), (kind, col)


@pytest.mark.parametrize("bad,match", [
    ("2023-11-16 18:15:60.0,1,1", r"line 1003, column TIMESTAMP: '2023-11-16 18:15:60.0'"),
    ("2023-11-16 18:15:46.5,-1,1", r"line 1003, column ContextTokens: -1 is not"),
    ("2023-11-16 18:15:46.5,1,3000000000", r"line 1003, column GeneratedTokens: 3000000000 is not .* \(1 such"),
])
def test_a_bad_row_past_the_first_block_is_named_by_its_line(tmp_path, monkeypatch, bad, match):
    monkeypatch.setattr(azure.azure_columns, "CHUNK_BYTES", 1000)
    path = tmp_path / "t.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write(AZ + "".join(f"{c},{k}\n" for c, _, k in _rows(1000)) + "\n" + bad + "\n")
    with pytest.raises(InvalidArgumentError, match=match):
        azure._load.__wrapped__(str(path), "code")
