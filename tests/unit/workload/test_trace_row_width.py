"""Trace rows whose cells do not line up with the header (found in review): a row with a cell more than the header
(a count written "1,000", a decimal comma "0,5") was read with its cells shifted and the last one dropped, and a
ServeGen client window cut short before its pattern was skipped as a window without traffic. Both are refused,
naming the file and the line, in the Azure trace and in each ServeGen file."""

from __future__ import annotations

import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.workload import azure, servegen as sg

T = "2023-11-16 18:15:46.68"
AZ = "TIMESTAMP,ContextTokens,GeneratedTokens\n" + f"{T},100,20\n"
CW = "category,model,client_id,t_s,rate_rps,cv,pattern,param1,param2\n"
CW_ROW = "language,m-large,1,{t},1.0,1.0,Gamma,1.0,1.0\n"
RATES = "category,model,t_s,total_rate_rps,rate_weighted_cv\n" + "language,m-large,0,200.0,2.0\n"
PMF = "category,model,field,value,prob\n" + "language,m-large,input_tokens,9,0.5\n"


def _refused(path, body, load, line, match):
    path.write_text(body)
    with pytest.raises(InvalidArgumentError, match=match) as e:
        load(str(path))
    assert str(path) in str(e.value) and e.value.line == line


def test_an_azure_row_with_a_cell_more_than_the_header_is_refused(tmp_path):
    # before: loaded as ContextTokens 1, GeneratedTokens 0 (replayed as 1), the "5" dropped
    _refused(tmp_path / "az.csv", AZ + f"{T},1,000,5\n", lambda p: azure._load.__wrapped__(p, "conv"), 3,
             r"line 3: 4 cells, the header has 3 .*'5'")


@pytest.mark.parametrize("body,line", [
    (CW + CW_ROW.format(t=0) + "language,m-large,1,600,1.0,1.0,Gamma,0,87,0.07\n", 3),  # before: scale 87
    (CW + CW_ROW.format(t=0) + "language,m-large,1,600,1.0,1.0\n", 3),  # before: skipped, no traffic
], ids=["a cell more", "cut before pattern"])
def test_a_servegen_client_window_longer_or_shorter_than_the_header_is_refused(tmp_path, body, line):
    _refused(tmp_path / "cw.csv", body, sg.load_client_windows, line, f"line {line}")


def test_servegen_rates_and_pmf_rows_with_a_cell_more_than_the_header_are_refused(tmp_path):
    # before: a rate of 212 requests/s, a rate-weighted CV of 78; a probability of 0 for length 10
    _refused(tmp_path / "rates.csv", RATES + "language,m-large,600,212,78,2.1\n", sg.load_model_rates, 3,
             "line 3: 6 cells, the header has 5")
    _refused(tmp_path / "pmf.csv", PMF + "language,m-large,input_tokens,10,0,5\n", sg.load_length_pmfs, 3,
             "line 3: 6 cells, the header has 5")


def test_rows_that_line_up_still_load(tmp_path):
    (tmp_path / "az.csv").write_text(AZ + f"{T},1000,5\n")
    assert azure._load.__wrapped__(str(tmp_path / "az.csv"), "conv").prompt_tokens.tolist() == [100, 1000]
    (tmp_path / "cw.csv").write_text(CW + CW_ROW.format(t=0) + CW_ROW.format(t=600))
    assert len(sg.load_client_windows(str(tmp_path / "cw.csv"))["m-large.c1"].t_s) == 2
    (tmp_path / "rates.csv").write_text(RATES)
    assert sg.load_model_rates(str(tmp_path / "rates.csv"))["m-large"][1].tolist() == [200.0]
