"""The live controller's statistical fits are made in a background process (``Policy.fit_in_background``), not
in its ticks. Found in review: one STL fit takes 0.5-0.8 s at 300 s windows and 5-20 s at 60 s windows, and a
tick made it on the controller's event loop, where workers are declared lost after 3 s of silence (a thread
would not do: STL holds the GIL for the whole fit). The paper forecast stands in until a fit arrives; a later
tick adopts it, and from then on the forecasts are the inline ones. The simulator keeps fitting inline."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import numpy as np
import pytest

from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy import forecast as F
from warmserve.policy.state import ClusterState, ModelInfo

DAYS = 5


def _policy(forecaster: str, window_s: float):
    period = round(86400 / window_s)
    models = [ModelInfo("m0", 10 << 30, 1, 1 << 19)]
    n = DAYS * period
    a = 20 + 10 * np.sin(np.arange(n) * 2 * np.pi / period) + np.random.default_rng(0).normal(0, 2, n)
    pol = make_policy("warmserve", models=models, config=PolicyConfig(forecaster=forecaster, window_s=window_s),
                      history={"m0": (np.arange(n) * window_s, a, 1.5 * a)})
    return pol, models, a, period


def _count_fits(monkeypatch) -> list:
    fits = []
    real = F.fit_state  # this process's only: the background process imports its own
    monkeypatch.setattr(F, "fit_state", lambda *a, **k: fits.append(a[0]) or real(*a, **k))
    return fits


def test_stl_with_one_minute_windows_never_fits_in_a_tick(monkeypatch):
    fits = _count_fits(monkeypatch)
    pol, models, a, period = _policy("stl", 60.0)
    pol.fit_in_background()
    state = ClusterState.uniform(1, models)
    n = DAYS * period
    try:
        worst = 0.0
        for k in range(4):
            t0 = time.perf_counter()
            pol.tick(state, n * 60.0 + 1.0 + k)
            worst = max(worst, time.perf_counter() - t0)
        # an inline fit takes 5-20 s here; the ticks stand on the paper forecast meanwhile
        assert fits == [] and worst < 2.0, (fits, worst)
        assert pol.forecast("m0", n)[0] == pytest.approx(F.paper_next(a, period))
    finally:
        pol.close_fits()


@pytest.mark.parametrize("forecaster", ["stl", "auto"])
def test_the_background_fits_are_adopted_at_a_later_tick(monkeypatch, forecaster):
    fits = _count_fits(monkeypatch)
    pol, models, a, period = _policy(forecaster, 3600.0)  # 24 windows a day: fits of milliseconds
    pol.fit_in_background()
    state = ClusterState.uniform(1, models)
    n = DAYS * period
    try:
        deadline = time.monotonic() + 90  # the process's start (imports) takes a few seconds
        k = 0
        while not all(fc.ready(n) for fc in pol._fc["m0"]):
            assert time.monotonic() < deadline, "the background fits never arrived"
            pol.tick(state, n * 3600.0 + 1.0 + k)
            k += 1
            time.sleep(0.05)
        avg, peak = pol.forecast("m0", n)
        assert fits == [] and k > 1  # adopted: the forecasts of the day need no fit here
        ref_avg, ref_peak = F.ModelForecaster(forecaster, period), F.ModelForecaster(forecaster, period)
        assert avg == pytest.approx(ref_avg.predict(a))
        assert peak == pytest.approx(max(ref_peak.predict(1.5 * a), avg))
    finally:
        pol.close_fits()


def test_the_paper_forecaster_starts_no_process():
    pol, models, a, period = _policy("paper", 3600.0)
    pol.fit_in_background()
    assert all(fc.background is None for pair in pol._fc.values() for fc in pair)


def test_the_live_controller_fits_in_the_background():
    import os

    from warmserve.config import ClusterConfig, ControllerConfig, ModelSpec, default_demo_dir
    from warmserve.controller.controller import Controller
    from warmserve.controller.models import controller_model
    from warmserve.policy.config import policy_config_from_dict

    path = os.path.join(default_demo_dir(), "llama-20m")
    if not os.path.isfile(os.path.join(path, ".warmserve-demo")):
        from warmserve.engine.demo import write_demo_models

        path = write_demo_models(None, ["llama-20m"])["llama-20m"]
    model = controller_model(ModelSpec(path=path))
    cc = ControllerConfig(policy_config=policy_config_from_dict({"window_s": 60, "forecaster": "stl"}))
    c = Controller(ClusterConfig(models=(model.spec,), controller=cc), [model])
    try:
        backgrounds = {id(fc.background): fc.background for pair in c.policy._fc.values() for fc in pair}
        assert None not in backgrounds.values()
        bg = next(iter(backgrounds.values()))
        bg.submit("stl", np.zeros(3), 2, 2, 10, 4, {})  # starts the process
        proc = bg._proc
        assert proc.poll() is None
        asyncio.run(c.close())  # a Cluster closed in a long-lived program leaves no fitting process behind
        assert proc.wait(timeout=10) is not None
    finally:
        c.policy.close_fits()


UNGUARDED_SCRIPT = """
import os, sys, time
import numpy as np
print("top level", os.getpid(), flush=True)
from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy.state import ClusterState, ModelInfo

period, n = 24, 5 * 24
a = 20 + 10 * np.sin(np.arange(n) * 2 * np.pi / period)
models = [ModelInfo("m0", 10 << 30, 1, 1 << 19)]
pol = make_policy("warmserve", models=models, config=PolicyConfig(forecaster="stl", window_s=3600.0),
                  history={"m0": (np.arange(n) * 3600.0, a, 1.5 * a)})
pol.fit_in_background()
state = ClusterState.uniform(1, models)
t0, k = time.monotonic(), 0
while time.monotonic() - t0 < 60 and not all(fc.ready(n) for fc in pol._fc["m0"]):
    pol.tick(state, n * 3600.0 + 1.0 + k)
    k += 1
    time.sleep(0.2)
bg = pol._fc["m0"][0].background
print("ready", all(fc.ready(n) for fc in pol._fc["m0"]), "restarts", bg._restarts, flush=True)
pol.close_fits()
"""


def test_a_script_without_a_main_guard_gets_its_fits_and_runs_once(tmp_path):
    """Found in review: the fits' process was multiprocessing's spawn, which runs the parent's __main__ file again
    in the child. A script written as the README's example (no ``if __name__ == "__main__"``) ran its top level
    in every fitting process (a second Cluster, in a real one), each of which failed: 4 restarts, no fit ever."""
    script = tmp_path / "user_script.py"
    script.write_text(UNGUARDED_SCRIPT)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    lines = r.stdout.splitlines()
    assert r.returncode == 0, r.stderr[-3000:]
    assert sum(line.startswith("top level") for line in lines) == 1, r.stdout
    assert "ready True restarts 0" in lines, (r.stdout, r.stderr[-3000:])
