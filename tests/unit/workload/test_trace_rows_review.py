"""Trace files with bad rows (found in review): the Azure and ServeGen loaders crashed with bare errors naming no
file or line (an empty file: "zero-size array to reduction operation minimum"; a short row: a NoneType TypeError;
a missing column: KeyError; a blank or float token cell: int()'s ValueError), or took the rows silently wrong (a
negative token count or length kept, a NaN probability sampled as the first length, probabilities summing to 0 as
NaN, a negative or NaN rate as no requests, an unknown pattern as Weibull, a repeated window twice). Each is now an
InvalidArgumentError that names the file, the line and the column."""

from __future__ import annotations

import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.workload import load_azure, servegen as sg, servegen_workload

AZ = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
T = "2023-11-16 18:15:46.68"


@pytest.mark.parametrize("body,match", [
    ("", "is empty"),
    (AZ, "has a header but no request"),
    ("TIMESTAMP,ContextTokens\n" + f"{T},10\n", "no column GeneratedTokens"),
    (AZ + f"{T},1\n", "line 2: no GeneratedTokens cell"),
    (AZ + f"{T},1,1\n{T},,5\n", "line 3, column ContextTokens: '' is not a token count"),
    (AZ + f"{T},10.0,5\n", "line 2, column ContextTokens: '10.0'"),
    (AZ + f"{T},nan,5\n", "line 2, column ContextTokens: 'nan'"),
    (AZ + f"{T},5,x\n", "line 2, column GeneratedTokens: 'x'"),
    (AZ + "not-a-time,1,1\n", "line 2, column TIMESTAMP"),
    (AZ + "2023-11-16 18:15:46.5+01:00,1,1\n", "line 2, column TIMESTAMP"),
    (AZ + f"{T},10,5\n{T},-10,5\n", r"line 3, column ContextTokens: -10 is not a token count in \[0, "),
    (AZ + f"{T},10,-5\n", "line 2, column GeneratedTokens: -5"),
    (AZ + f"{T},3000000000,5\n", "line 2, column ContextTokens: 3000000000"),
])
def test_azure_bad_rows_are_refused_naming_file_line_and_column(tmp_path, body, match):
    path = tmp_path / "trace.csv"
    path.write_text(body)
    with pytest.raises(InvalidArgumentError, match=match) as e:
        load_azure("conv", str(path))
    assert str(path) in str(e.value)


def test_azure_good_rows_still_load(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text(AZ + f"{T},10,5\n2023-11-16 18:15:47,0,1\n")
    t = load_azure("code", str(path))
    assert t.arrival_s.tolist() == pytest.approx([0.0, 0.32]) and t.prompt_tokens.tolist() == [10, 0]


CW = "category,model,client_id,t_s,rate_rps,cv,pattern,param1,param2\n"


def _windows(rate="1.0", pattern="Gamma", shape="1.0", scale="1.0", days=14):
    return "".join(f"language,m-large,1,{t},{rate},1.0,{pattern},{shape},{scale}\n"
                   for t in range(0, days * 86400, 600))


@pytest.mark.parametrize("body,match", [
    ("", "is empty"),
    (CW, "has a header but no window"),
    (CW.replace(",pattern", ""), "no column pattern"),
    (CW + "language,m-large,1,abc,1.0,1.0,Gamma,1.0,1.0\n", "line 2, column t_s: 'abc'"),
    (CW + "language,m-large,1,0,1.0,1.0,Gamma,1.0\n", "line 2: no param2 cell"),
    (CW + "language,m-large,1,0,,1.0,Gamma,1.0,1.0\n", "line 2, column rate_rps: ''"),
    (CW + _windows(rate="-1.0"), "line 2, column rate_rps: -1.0 is not a rate >= 0"),
    (CW + _windows(rate="nan"), "line 2, column rate_rps: nan"),
    (CW + _windows(pattern="Lognormal"), "line 2, column pattern: 'Lognormal' is not one of Gamma, Weibull"),
    (CW + _windows(shape="inf"), "line 2, column param1: inf"),
    (CW + _windows(scale="-2"), "line 2, column param2: -2.0"),
    (CW + _windows(days=1) + _windows(days=1), "lines 2 and 146: client m-large.c1 has two rows for the window t_s=0"),
])
def test_servegen_bad_client_windows_are_refused_naming_file_line_and_column(tmp_path, body, match):
    path = tmp_path / "windows.csv"
    path.write_text(body)
    with pytest.raises(InvalidArgumentError, match=match) as e:
        servegen_workload(1, path=str(path), history_days=0, models=("m-large",), seed=0)
    assert str(path) in str(e.value)


PMF = "category,model,field,value,prob\n"
OUT = "language,m-large,output_tokens,5,1\n"


@pytest.mark.parametrize("body,match", [
    ("", "is empty"),
    (PMF, "has a header but no row"),
    (PMF.replace(",prob", ""), "no column prob"),
    (PMF + "language,m-large,input_tokens,-10,1\n" + OUT, "line 2, column value: -10.0 is not a token length"),
    (PMF + "language,m-large,input_tokens,10.5,1\n" + OUT, "line 2, column value: 10.5 is not a whole number"),
    (PMF + "language,m-large,input_tokens,ten,1\n" + OUT, "line 2, column value: 'ten'"),
    (PMF + "language,m-large,input_tokens,10,nan\nlanguage,m-large,input_tokens,20,1\n" + OUT,
     "line 2, column prob: nan is not a probability"),
    (PMF + "language,m-large,input_tokens,10,-1\nlanguage,m-large,input_tokens,20,2\n" + OUT,
     "line 2, column prob: -1.0"),
    (PMF + "language,m-large,input_tokens,10,0\nlanguage,m-large,input_tokens,20,0\n" + OUT,
     "lines 2-3: the probabilities of model m-large, field input_tokens sum to 0"),
    (PMF + "language,m-large,input_tokens,10\n" + OUT, "line 2: no prob cell"),
])
def test_servegen_bad_pmf_rows_are_refused_naming_file_line_and_column(tmp_path, body, match):
    windows = tmp_path / "windows.csv"
    windows.write_text(CW + _windows())
    path = tmp_path / "pmf.csv"
    path.write_text(body)
    with pytest.raises(InvalidArgumentError, match=match) as e:
        servegen_workload(1, path=str(windows), pmf_path=str(path), history_days=0, models=("m-large",), seed=0)
    assert str(path) in str(e.value)


def test_servegen_good_custom_files_still_load_and_other_fields_stay_lenient(tmp_path):
    windows = tmp_path / "windows.csv"
    windows.write_text(CW + _windows(pattern="Weibull", scale="0"))
    path = tmp_path / "pmf.csv"
    path.write_text(PMF + "language,m-large,input_tokens,10,1\n" + OUT + "reason,m-large,reason_ratio,n/a,0.5\n"
                    "reason,m-large,reason_ratio,nan,0.2\nreason,m-large,reason_ratio,0.5,0.3\n")
    pmfs = sg.load_length_pmfs(str(path))
    assert pmfs[("m-large", "reason_ratio")].values.tolist() == [0]  # a field's rows that are no number: left out
    w = servegen_workload(1, path=str(windows), pmf_path=str(path), history_days=0, models=("m-large",), seed=0)
    assert len(w.trace) == 1200 and set(w.trace.prompt_tokens.tolist()) == {10}


def test_servegen_windows_with_a_zero_rate_or_shape_load_as_quiet_windows(tmp_path):
    # the bounds are rate >= 0 and shape >= 0: a window without traffic is real data, found by mutation testing to be
    # refusable (rate > 0) without a test failing
    quiet = "language,m-large,1,{t},0,1.0,Gamma,0,1.0\n"
    busy = "language,m-large,1,{t},2.0,1.0,Gamma,1.0,1.0\n"
    windows = tmp_path / "windows.csv"
    windows.write_text(CW + "".join((quiet if (t // 600) % 2 else busy).format(t=t) for t in range(0, 14 * 86400, 600)))
    w = servegen_workload(1, path=str(windows), history_days=0, models=("m-large",), seed=0)
    assert len(w.trace) == 1200 and w.trace.arrival_s.max() < 600  # the replay's second window is a quiet one
