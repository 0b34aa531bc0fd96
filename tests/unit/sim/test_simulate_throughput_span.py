"""`warmserve simulate`'s throughput is the requests completed over the trace's span, the drain said apart (found in
review: "thr rps" was completed / max(end_s, duration_s), the drain after the trace in its denominator, so a run that
answered every request read below the offered rate, by as much as its tail lagged). A small real run: 2 models, 30 s
at 2 rps, two seeds; every request completes, about 8 s after the trace's end."""

from __future__ import annotations

import json

import pytest

from warmserve import cli

RUN = ["simulate", "--workload", "paper-conv", "--gpus", "8", "--models", "2", "--duration-s", "30", "--rate", "2",
       "--policy", "warmserve", "--seeds", "0,1", "--no-search", "--quiet"]


def _row(table: str, name: str) -> dict:
    """The printed table's row of policy ``name``, keyed by header (a two-word header is one key)."""
    lines = table[table.index("policy "):].splitlines()  # the table, after the run's line
    head = lines[0].replace("TTFT mean", "TTFT_mean").replace("TPOT p50", "TPOT_p50").replace("thr rps", "thr_rps")
    head = head.replace("GPU-s held", "GPU-s_held").replace("drain s", "drain_s").replace("max rps@SLO", "max_rps")
    row = next(line.split() for line in lines[1:] if line.split()[0] == name)
    return dict(zip(head.split(), row))


def test_throughput_is_completed_over_the_trace_span_and_the_drain_is_apart(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert cli.main([*RUN, "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    s = doc["policies"]["warmserve"]
    dur = doc["workload"]["duration_s"]
    assert s["dropped"] == 0 and s["end_s"] > dur + 1  # every request answered, the last well after the trace
    # every request completed: the throughput is the offered rate, whatever the drain
    offered = doc["workload"]["requests"] / dur
    assert s["throughput_rps"] == pytest.approx(s["completed"] / dur)
    assert s["throughput_rps"] == pytest.approx(offered)
    assert s["drain_s"] == pytest.approx(s["end_s"] - dur)
    for sd, x in s["per_seed"].items():  # each seed's own figures by the same definition
        assert x["throughput_rps"] == pytest.approx(x["completed"] / dur)
        assert x["drain_s"] == pytest.approx(x["end_s"] - dur)
        for m in x["per_model"].values():
            assert m["throughput_rps"] == pytest.approx(m["completed"] / dur)
    for m in s["per_model"].values():
        assert m["throughput_rps"] == pytest.approx(m["completed"] / dur)
    # the printed table says what the JSON holds
    row = _row(capsys.readouterr().out, "warmserve")
    assert row["thr_rps"] == f"{s['throughput_rps']:.2f}" and row["drain_s"] == f"{s['drain_s']:.0f}"
    assert row["dropped"] == "0"  # a median over seeds of whole counts: no "0.0"
