import numpy as np
import pytest

from warmserve.workload.azure import load_azure
from warmserve.workload.concurrency import concurrency_windows
from warmserve.workload.request import Request, Trace
from warmserve.workload import servegen as sg


def test_azure_traces_match_published_stats():
    code, conv = load_azure("code"), load_azure("conv")
    assert len(code) == 8819 and len(conv) == 19366
    assert code.rate_rps() == pytest.approx(2.57, abs=0.01)
    assert conv.rate_rps() == pytest.approx(5.53, abs=0.01)
    assert float(conv.prompt_tokens.mean()) == pytest.approx(1155, abs=1)
    assert float(conv.output_tokens.mean()) == pytest.approx(211, abs=1)
    assert conv.arrival_s[0] == 0 and np.all(np.diff(conv.arrival_s) >= 0)
    r = next(iter(conv))
    assert isinstance(r, Request) and r.model == "azure-conv" and r.prompt_tokens == 374 and r.output_tokens == 44


def test_azure_rejects_unknown_kind():
    with pytest.raises(ValueError, match="code"):
        load_azure("chat")


def test_servegen_rates_and_pmfs():
    rates = sg.load_model_rates()
    t, r, cv = rates["m-large"]
    assert len(t) == 2016 and r.mean() == pytest.approx(195.8, rel=0.01)
    pmfs = sg.load_length_pmfs()
    # SOURCES.md: mean input/output tokens of m-large 936/144 (request-weighted, 6 h windows)
    assert pmfs[("m-large", "input_tokens")].mean() == pytest.approx(936, rel=0.15)
    assert pmfs[("m-small", "output_tokens")].mean() == pytest.approx(16, rel=0.2)
    assert len(sg.load_length_stats()) > 0


def test_servegen_arrivals_fill_windows_with_rate_times_600():
    cw = sg.load_client_windows(models=("m-small",))
    s = max(cw.values(), key=lambda c: c.total_requests())
    j = int(np.argmax(s.rate_rps))
    t0 = float(s.t_s[j])
    a = sg.sample_arrivals(s, t0, t0 + sg.WINDOW_S, 1.0, np.random.default_rng(0))
    assert len(a) == pytest.approx(s.rate_rps[j] * 600, abs=1)
    assert a.min() >= t0 and a.max() <= t0 + 600 and a.max() > t0 + 599


def test_trace_concat_remaps_models_and_sorts():
    a = Trace(["x"], [3.0, 1.0], [0, 0], [5, 6], [1, 2])
    b = Trace(["y"], [2.0], [0], [7], [0])
    t = Trace.concat(["y", "x"], [a, b])
    assert t.arrival_s.tolist() == [1.0, 2.0, 3.0]
    assert [t.models[m] for m in t.model] == ["x", "y", "x"]
    assert t.output_tokens.tolist() == [2, 1, 1]  # at least one output token
    with pytest.raises(ValueError):
        Trace(["x"], [1.0], [0, 0], [1], [1])


def test_concurrency_windows_time_weighted():
    starts, avg, peak = concurrency_windows(np.array([0.0, 10, 20]), np.array([100.0, 50, 400]), 0, 600, 300)
    assert starts.tolist() == [0, 300]
    assert avg == pytest.approx([420 / 300, 100 / 300])
    assert peak.tolist() == [3, 1]
