"""Trace files whose bytes cannot be read as text (found in review): a byte that is not UTF-8 in a row, or a .gz
file cut short or damaged, reached the caller as a bare UnicodeDecodeError, EOFError or BadGzipFile, naming
neither the file nor the line. Each is an InvalidArgumentError naming the file (and, for a bad byte, the line and
column), in the Azure trace and in each ServeGen file."""

from __future__ import annotations

import gzip

import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.workload import azure, servegen as sg

T = "2023-11-16 18:15:46.68"
AZ = ("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(f"{T},{100 + i},20\n" for i in range(2000))).encode()
CW = ("category,model,client_id,t_s,rate_rps,cv,pattern,param1,param2\n"
      + "".join(f"language,m-large,1,{t},1.0,1.0,Gamma,1.0,1.0\n" for t in range(0, 600 * 2000, 600))).encode()
PMF = ("category,model,field,value,prob\n"
       + "".join(f"language,m-large,input_tokens,{v},0.5\n" for v in range(2000))).encode()
RATES = ("category,model,t_s,total_rate_rps,rate_weighted_cv\n"
         + "".join(f"language,m-large,{t},200.0,2.0\n" for t in range(0, 600 * 2000, 600))).encode()

LOADERS = {
    "azure": (AZ, lambda p: azure._load.__wrapped__(p, "conv"), b"100", "ContextTokens"),
    "client windows": (CW, sg.load_client_windows, b"m-large,1,0,", "model"),
    "pmf": (PMF, sg.load_length_pmfs, b"m-large,input_tokens,0,", "model"),
    "rates": (RATES, sg.load_model_rates, b"m-large,0,", "model"),
}


@pytest.mark.parametrize("kind", list(LOADERS))
@pytest.mark.parametrize("gz", [False, True], ids=["csv", "gz"])
def test_a_byte_that_is_not_utf8_is_refused_naming_the_line_and_column(tmp_path, kind, gz):
    body, load, cell, col = LOADERS[kind]
    bad = body.replace(cell, cell[:1] + b"\xff" + cell[1:], 1)  # in the first row, line 2
    path = tmp_path / ("f.csv.gz" if gz else "f.csv")
    path.write_bytes(gzip.compress(bad) if gz else bad)
    with pytest.raises(InvalidArgumentError, match=f"line 2, column {col}: .* not UTF-8") as e:
        load(str(path))
    assert str(path) in str(e.value) and e.value.line == 2


@pytest.mark.parametrize("kind", list(LOADERS))
@pytest.mark.parametrize("damage", ["cut short", "damaged", "not gzip"])
def test_a_gz_file_cut_short_or_damaged_is_refused_naming_the_file(tmp_path, kind, damage):
    body, load, _, _ = LOADERS[kind]
    data = gzip.compress(body)
    if damage == "cut short":
        data = data[:len(data) // 2]
    elif damage == "damaged":
        data = data[:-8] + bytes(b ^ 0xFF for b in data[-8:])  # its CRC and length
    else:
        data = body
    path = tmp_path / "f.csv.gz"
    path.write_bytes(data)
    with pytest.raises(InvalidArgumentError, match="cannot be read as a .gz file") as e:
        load(str(path))
    assert str(path) in str(e.value)


@pytest.mark.parametrize("kind", list(LOADERS))
def test_the_same_files_whole_still_load(tmp_path, kind):
    body, load, _, _ = LOADERS[kind]
    path = tmp_path / "f.csv.gz"
    path.write_bytes(gzip.compress(body))
    assert len(load(str(path)))
