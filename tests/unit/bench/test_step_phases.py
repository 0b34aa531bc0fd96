"""step_phases (bench/gpu_graphs.py part 8) on a real engine on the CPU: each phase timed, the phases adding up to
the step, the engine's methods restored after (also when a step raises), the tokens those of an engine run
without it."""

import pytest
import torch

from warmserve.bench.step_phases import phases_line, step_phases
from warmserve.engine import Engine, SamplingParams, load_model
from warmserve.engine.demo import write_demo_models
from warmserve.memory import PagePool


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    path = write_demo_models(str(tmp_path_factory.mktemp("demo")), names=["llama-20m"])["llama-20m"]
    with PagePool(256 << 20, backend="host", prefault=False) as pool:
        m = load_model(path, pool).wait()
        yield m
        m.close()


def run(lm, phases: bool, sync=None):
    torch.manual_seed(0)
    with Engine(lm, max_num_seqs=4) as eng:
        for i in range(2):
            eng.add_request(str(i), [5 + i, 6, 7, 8], SamplingParams(max_tokens=8, ignore_eos=True))
        outs = {}
        for o in eng.step():  # the prefill, outside the phases
            outs.setdefault(o.request_id, []).extend(o.token_ids)
        captured = []
        real = eng._append

        def append(seq, tok, lp):  # noted on the class's own path, so a wrapper that lost tokens shows
            captured.append((seq.request_id, tok))
            return real(seq, tok, lp)
        eng._append = append
        p = step_phases(eng, 20, sync=sync) if phases else None
        while eng.has_unfinished():
            eng.step()
        for rid, tok in captured:
            outs.setdefault(rid, []).append(tok)
        assert "_run" not in vars(eng) and "_sample" not in vars(eng) and "schedule" not in vars(eng.scheduler)
        return p, outs


def test_phases_add_up_and_change_nothing(lm):
    p, outs = run(lm, True)
    _, want = run(lm, False)
    assert outs == want and all(len(t) == 8 for t in outs.values())
    assert p["steps"] == 7  # 8 tokens: the prefill gave the first, then it stopped early with none left
    assert p["wait_us"] == 0 and p["forward_us"] > 0 and p["schedule_us"] > 0 and p["sample_us"] > 0
    parts = p["schedule_us"] + p["forward_us"] + p["wait_us"] + p["sample_us"] + p["rest_us"]
    assert parts == pytest.approx(p["step_us"], rel=1e-9) and p["host_us"] == p["step_us"]
    assert "wait for the device 0" in phases_line("cpu", p)


def test_a_sync_is_timed_as_the_wait_and_a_failure_restores_the_engine(lm):
    calls = []
    p, _ = run(lm, True, sync=lambda: calls.append(1))
    assert len(calls) == p["steps"] + 1 and p["wait_us"] > 0  # one before each step's sampling, one at the end
    assert p["host_us"] == pytest.approx(p["step_us"] - p["wait_us"])

    def broken():
        raise RuntimeError("device lost")
    with Engine(lm) as eng:
        eng.add_request("x", [5, 6, 7], SamplingParams(max_tokens=4, ignore_eos=True))
        eng.step()
        with pytest.raises(RuntimeError, match="device lost"):
            step_phases(eng, 3, sync=broken)
        assert "_run" not in vars(eng) and "_sample" not in vars(eng) and "schedule" not in vars(eng.scheduler)
        while eng.has_unfinished():  # the engine steps on as before
            eng.step()
