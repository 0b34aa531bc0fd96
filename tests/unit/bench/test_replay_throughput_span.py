"""`warmserve bench replay`'s throughput, live and in its twin, is the requests completed over the trace's span, the
drain past it said apart as ``drain_s``: the simulator's definition (``sim.metrics``). Found in review:
the live side divided by its last completion, the twin by the simulator's end of run, and both counted the drain, so
a run that answered every request read below the offered rate and the two sides' figures differed in kind."""

from __future__ import annotations

import json

import pytest

from replay_harness import replay_args, replay_setup
from warmserve.bench import replay as R
from warmserve.workload.replay_client import Outcome

DURATION_S = 10.0


def _ok(i: int, arrival_s: float, end_s: float) -> Outcome:
    return Outcome(i, "m", arrival_s, 8, 2, status="ok", sent_s=arrival_s, first_s=arrival_s + 0.1, end_s=end_s,
                   completion_tokens=2)


def test_live_throughput_is_completed_over_the_span_and_the_drain_is_apart():
    # four requests answered, the last 5 s after the trace's end: 4 over the 10 s span, a 5 s drain
    outs = [_ok(0, 1.0, 2.0), _ok(1, 4.0, 5.0), _ok(2, 8.0, 9.0), _ok(3, 9.5, 15.0)]
    s, per_model, _ = R.summarize(outs, DURATION_S, None, deadline_s=9.5 + 60)
    assert s["throughput_rps"] == pytest.approx(4 / DURATION_S)
    assert per_model["m"]["throughput_rps"] == pytest.approx(4 / DURATION_S)
    assert s["end_s"] == pytest.approx(15.0) and s["drain_s"] == pytest.approx(5.0)


def test_live_drain_runs_to_the_clients_deadline_where_a_request_was_left_open():
    # one request never answered: the client waited for it until its deadline, as the twin's run does (its horizon)
    outs = [_ok(0, 1.0, 2.0), Outcome(1, "m", 9.0, 8, 2)]
    s, _, _ = R.summarize(outs, DURATION_S, None, deadline_s=9.0 + 20)
    assert s["throughput_rps"] == pytest.approx(1 / DURATION_S)
    assert s["end_s"] == pytest.approx(29.0) and s["drain_s"] == pytest.approx(19.0)


def test_a_run_that_ends_inside_the_span_has_no_drain():
    s, _, _ = R.summarize([_ok(0, 1.0, 2.0)], DURATION_S, None, deadline_s=1.0 + 60)
    assert s["drain_s"] == 0.0 and s["end_s"] == DURATION_S


def test_the_twin_counts_throughput_and_drain_as_the_live_side():
    a, w, served_sim, cost = replay_setup("--time-scale", "0.05", "--rate", "2", "--duration-s", "600",
                                          "--start-lead-s", "40", "--drain-s", "30")
    s, _ = R.run_sim("autoscale", w, served_sim, a, cost)
    assert s["completed"] > 0 and s["end_s"] > s["duration_s"] == w.duration_s
    assert s["throughput_rps"] == pytest.approx(s["completed"] / w.duration_s)
    assert s["drain_s"] == pytest.approx(s["end_s"] - w.duration_s)
    for m in s["per_model"].values():
        assert m["throughput_rps"] == pytest.approx(m["completed"] / w.duration_s)


def test_reused_live_figures_from_before_are_recounted_over_the_span(tmp_path, capsys):
    """--reuse-live of a file written before throughput was counted over the trace's span: its live figure is
    recounted (completed over the span), not carried beside a twin counted the new way; the file has no drain."""
    from stub_server import serve_in_thread, stream_completion

    first, again = tmp_path / "first.json", tmp_path / "again.json"
    run = ["--models", "2", "--duration-s", "200", "--time-scale", "0.01", "--rate", "5", "--max-output-tokens", "2",
           "--drain-s", "2", "--quiet", "--policy", "p", "--served-names", "a,b"]
    with serve_in_thread([("POST", "/v1/completions", stream_completion)]) as srv:
        assert R.main(replay_args(*run, "--endpoint", srv.url, "--json", str(first))) == 0
    run += ["--endpoint", srv.url]  # as the file's args (the reuse sends nothing)
    doc = json.loads(first.read_text())
    dur, s = doc["workload"]["duration_s"], doc["policies"]["p"]
    assert s["completed"] == s["requests"] > 0 and s["throughput_rps"] == pytest.approx(s["completed"] / dur)
    # the file as an older tree wrote it: completed over a later end, no end_s or drain_s
    s["throughput_rps"] = s["completed"] / (2 * dur)
    for m in s["per_model"].values():
        m["throughput_rps"] = m["completed"] / (2 * dur)
    del s["end_s"], s["drain_s"]
    first.write_text(json.dumps(doc))
    capsys.readouterr()
    a = replay_args(*run, "--reuse-live", str(first), "--json", str(again))
    assert R.main(a) == 0
    s2 = json.loads(again.read_text())["policies"]["p"]
    assert s2["throughput_rps"] == pytest.approx(s["completed"] / dur) and "drain_s" not in s2
    for m in s2["per_model"].values():
        assert m["throughput_rps"] == pytest.approx(m["completed"] / dur)
    row = next(line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("p "))
    assert row[-2:] == [f"{s2['throughput_rps']:.2f}", "-"]  # thr rps, drain s (unknown: not in the file)
