"""Traces that loaded, or were built, silently wrong (found in review):

- ``Trace`` checked nothing: a NaN or infinite arrival was kept (and ``simulate`` then never ended: its horizon
  was NaN/inf), an int64 length past 2**31 wrapped to a negative one, a negative output became 1;
- ServeGen client windows less than 10 minutes apart were sampled as overlapping windows (rows every 300 s: 2x
  the rate);
- one Azure timestamp a year off made the trace "cover" a year, and ``paper_workload`` stacked ~150,000 copies of
  it until MemoryError;
- the loaders cached by path only: a file edited in the same process was not read again;
- an Azure trace appended to itself loaded at twice its rate;
- a CSV saved with a UTF-8 byte-order mark "had no column TIMESTAMP" while the header it printed showed one.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import signal

import numpy as np
import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.sim.config import ServedModel, SimConfig
from warmserve.sim.simulator import simulate
from warmserve.workload import Trace, Workload, load_azure, servegen as sg, servegen_workload
from warmserve.workload.data import data_path
from warmserve.workload.recipes import _circular_stretch

AZ = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
CW = "category,model,client_id,t_s,rate_rps,cv,pattern,param1,param2\n"
PMF = "category,model,field,value,prob\n"


def _trace(arrival, prompt=None, output=None):
    n = len(arrival)
    return Trace(["m"], np.asarray(arrival), np.zeros(n, np.int32),
                 np.full(n, 100) if prompt is None else np.asarray(prompt),
                 np.full(n, 10) if output is None else np.asarray(output))


# -- 1: Trace columns and the simulator's horizon ----------------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_trace_refuses_a_non_finite_arrival_naming_its_row(bad):
    with pytest.raises(InvalidArgumentError, match=rf"row 2: arrival_s {bad} is not finite \(a time in seconds\)"):
        _trace([0.0, 1.0, bad, 2.0])


@pytest.mark.parametrize("col,values,match", [
    ("prompt", [100, 3_000_000_000, 50], r"row 1: prompt_tokens 3000000000 is not a token count in \[0, 2147483647\]"),
    ("prompt", [100, 50, -20], r"row 2: prompt_tokens -20 is not a token count"),
    ("output", [10, -5, 10], r"row 1: output_tokens -5 is not a token count"),
    ("output", [10, 2**40, 10], r"row 1: output_tokens 1099511627776 is not a token count"),
    ("prompt", [1.0, float("nan"), 3.0], r"row 1: prompt_tokens nan is not a token count"),
    # one past each end (mutation testing: -1 could be let through without a test failing)
    ("prompt", [100, -1, 50], r"row 1: prompt_tokens -1 is not a token count"),
    ("output", [10, 2**31, 10], r"row 1: output_tokens 2147483648 is not a token count"),
])
def test_a_trace_refuses_lengths_outside_int32_before_casting_them(col, values, match):
    arr = np.asarray(values, np.float64 if isinstance(values[0], float) else np.int64)
    with pytest.raises(InvalidArgumentError, match=match):
        _trace([0.0, 1.0, 2.0], **{col: arr})


def test_a_trace_keeps_history_arrivals_and_zero_outputs_as_before():
    t = _trace([-5.0, 0.0, 1.0], prompt=np.array([0, 2**31 - 1, 7], np.int64), output=[0, 1, 3])
    assert t.arrival_s.tolist() == [-5.0, 0.0, 1.0] and t.prompt_tokens.tolist() == [0, 2**31 - 1, 7]
    assert t.output_tokens.tolist() == [1, 1, 3]  # 0 still means the one token the prefill makes


def _timeout(signum, frame):
    raise TimeoutError("simulate() did not return within 20 s")


def test_simulate_refuses_a_non_finite_arrival_instead_of_running_for_ever():
    t = _trace([0.0, 1.0, 2.0, 3.0])
    t.arrival_s[3] = float("nan")  # set after the Trace checked its columns, as a caller's code may
    w = Workload("mine", t, Trace.empty(["m"]), duration_s=10.0)
    old = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(20)
    try:
        with pytest.raises(InvalidArgumentError, match=r"1 of the 4 arrival times are not finite \(request 3: nan\)"):
            simulate(w, [ServedModel("m", "llama2-7b")], "dedicated",
                     config=SimConfig(n_servers=1, gpus_per_server=1))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# -- 2: ServeGen windows closer than 10 minutes ------------------------------------------------------------------

def _windows(step, client=1, start=0, days=1):
    return "".join(f"language,m-large,{client},{t},1.0,1.0,Gamma,1.0,1.0\n"
                   for t in range(start, days * 86400, step))


@pytest.mark.parametrize("step", [300, 60])
def test_servegen_windows_of_one_client_closer_than_10_minutes_are_refused(tmp_path, step):
    path = tmp_path / "windows.csv"
    path.write_text(CW + _windows(step))
    with pytest.raises(InvalidArgumentError, match=rf"lines 2 and 3: client m-large.c1 has windows at t_s=0 and "
                                                   rf"t_s={step}, {step} s apart: windows are 10 minutes") as e:
        sg.load_client_windows(str(path))
    assert str(path) in str(e.value)


def test_servegen_windows_10_minutes_apart_or_of_other_clients_still_load(tmp_path):
    path = tmp_path / "windows.csv"
    path.write_text(CW + _windows(600) + _windows(600, client=2, start=300))
    cw = sg.load_client_windows(str(path))
    assert sorted(cw) == ["m-large.c1", "m-large.c2"] and len(cw["m-large.c1"].t_s) == 144
    w = servegen_workload(1, path=str(path), history_days=0, models=("m-large",), seed=0, duration_s=1200,
                          pre_s=0, start_s=3600)
    assert w.meta["expected_rate_rps"] == pytest.approx(1.0)


# -- 3: an Azure timestamp far from the rest, and the copies a stretch may take ----------------------------------

def _azure_rows(n=200, step_s=3):
    return "".join(f"2023-11-16 18:{15 + i * step_s // 60:02d}:{i * step_s % 60:02d}.5,100,10\n" for i in range(n))


def test_an_azure_timestamp_a_year_after_the_rest_is_said_naming_its_lines(tmp_path, caplog):
    path = tmp_path / "trace.csv"
    path.write_text(AZ + _azure_rows() + "2024-11-16 18:20:00.0,100,10\n")
    with caplog.at_level(logging.WARNING, logger="warmserve.workload"):
        assert len(load_azure("conv", str(path))) == 201  # loaded as written: a real quiet spell looks the same
    assert re.search(r"lines 201 and 202: the arrivals 2023-11-16 18:24:57.5 and 2024-11-16 18:20:00.0 are 3.16e\+07 s "
                     r"apart", caplog.text) and str(path) in caplog.text


def test_hours_of_quiet_between_busy_hours_load_as_real_traffic(tmp_path):
    """The final review: a refusal of any gap over an hour turned away real traces with a night or an outage."""
    rows = "".join(f"2023-11-16 {h:02d}:{m:02d}:{s:02d}.0,100,10\n" for h in (1, 2, 5, 6) for m in range(60)
                   for s in range(0, 60, 30))
    path = tmp_path / "trace.csv"
    path.write_text(AZ + rows)
    assert len(load_azure("conv", str(path))) == 480


def test_an_azure_trace_with_quiet_minutes_still_loads(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text(AZ + _azure_rows() + "2023-11-16 18:40:00.0,100,10\n")  # 15 minutes after the rest
    assert len(load_azure("conv", str(path))) == 201
    for kind in ("code", "conv"):  # the published ones (code has a 217 s gap)
        assert len(load_azure(kind)) > 8000


def test_a_stretch_needing_too_many_copies_of_its_trace_is_refused():
    # 2 requests over 1000 s read at 40 rps: 20,000 copies (before: built them all; with a year-long span and
    # thousands of rows, MemoryError)
    with pytest.raises(InvalidArgumentError, match=r"the trace spans 1000 s with 2 requests \(0.002 rps\): 40 rps "
                                                   r"needs 20000 copies"):
        _circular_stretch(np.array([0.0, 500.0]), 1000.0, 0.0, 10.0, 40.0, np.random.default_rng(0))
    t, _ = _circular_stretch(np.array([0.0, 500.0]), 1000.0, 0.0, 10.0, 1.0, np.random.default_rng(0))
    assert len(t) > 0


# -- 4: the loaders' caches follow the file ----------------------------------------------------------------------

def test_an_azure_trace_edited_in_the_same_process_is_read_again(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text(AZ + "2023-11-16 18:15:46.0,10,5\n2023-11-16 18:15:47.0,20,5\n")
    assert len(load_azure("conv", str(path))) == 2
    path.write_text(AZ + "".join(f"2023-11-16 18:16:{s:02d}.0,30,5\n" for s in range(50)))
    t = load_azure("conv", str(path))
    assert len(t) == 50 and set(t.prompt_tokens.tolist()) == {30}


def test_servegen_files_edited_in_the_same_process_are_read_again(tmp_path):
    pm = tmp_path / "pmf.csv"
    pm.write_text(PMF + "language,x,input_tokens,10,1\nlanguage,x,output_tokens,5,1\n")
    assert sg.load_length_pmfs(str(pm))[("x", "input_tokens")].values.tolist() == [10]
    pm.write_text(PMF + "language,x,input_tokens,999,1\nlanguage,x,output_tokens,5,1\n")
    assert sg.load_length_pmfs(str(pm))[("x", "input_tokens")].values.tolist() == [999]
    cw = tmp_path / "windows.csv"
    cw.write_text(CW + _windows(600))
    assert float(sg.load_client_windows(str(cw))["m-large.c1"].rate_rps[0]) == 1.0
    st = os.stat(cw)
    cw.write_text(CW + _windows(600).replace(",1.0,1.0,Gamma", ",2.0,1.0,Gamma"))  # same size
    os.utime(cw, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert float(sg.load_client_windows(str(cw))["m-large.c1"].rate_rps[0]) == 2.0


# -- 5: an Azure trace with repeated rows ------------------------------------------------------------------------

def test_the_published_azure_trace_appended_to_itself_is_said(tmp_path, caplog):
    lines = gzip.open(data_path("azure2023_AzureLLMInferenceTrace_code.csv.gz"), "rt").read().splitlines()
    path = tmp_path / "twice.csv"
    path.write_text("\n".join(lines + lines[1:]) + "\n")
    n = len(lines) - 1
    with caplog.at_level(logging.WARNING, logger="warmserve.workload"):
        assert len(load_azure("code", str(path))) == 2 * n
    assert f"lines 2 and {n + 2} are alike in every column ({n} such repeated rows of {2 * n})" in caplog.text


def test_whole_second_rows_of_one_template_load_as_real_requests(tmp_path):
    """The final review: at whole-second timestamps, two requests of one fixed template are alike and real."""
    path = tmp_path / "trace.csv"
    path.write_text(AZ + "2023-11-16 18:15:46,100,10\n" * 3 + "2023-11-16 18:15:47,100,10\n")
    assert len(load_azure("conv", str(path))) == 4


def test_azure_rows_alike_but_for_one_column_still_load(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text(AZ + "2023-11-16 18:15:46.5,10,5\n2023-11-16 18:15:46.5,11,5\n2023-11-16 18:15:46.5000001,10,5\n")
    assert len(load_azure("conv", str(path))) == 3


# -- 6: a byte-order mark ----------------------------------------------------------------------------------------

def test_csv_files_with_a_utf8_byte_order_mark_load(tmp_path):
    az = tmp_path / "trace.csv"
    az.write_text(AZ + "2023-11-16 18:15:46.0,10,5\n2023-11-16 18:15:47.0,20,5\n", encoding="utf-8-sig")
    assert load_azure("conv", str(az)).prompt_tokens.tolist() == [10, 20]
    gz = tmp_path / "trace.csv.gz"
    with gzip.open(gz, "wt", encoding="utf-8-sig") as f:
        f.write(AZ + "2023-11-16 18:15:46.0,10,5\n")
    assert len(load_azure("conv", str(gz))) == 1
    pm = tmp_path / "pmf.csv"
    pm.write_text("model,field,value,prob\nm-large,input_tokens,10,1\nm-large,output_tokens,5,1\n",
                  encoding="utf-8-sig")
    assert sg.load_length_pmfs(str(pm))[("m-large", "input_tokens")].values.tolist() == [10]
    cw = tmp_path / "windows.csv"
    cw.write_text(CW + _windows(600), encoding="utf-8-sig")
    assert "m-large.c1" in sg.load_client_windows(str(cw))
