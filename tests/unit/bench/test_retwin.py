"""bench/replay/retwin.py on a committed live replay that used a warm-up and per-policy options: the twin is run
again with every workload argument of the live run (found: it dropped --warmup-s and --policy-option, and the
--reuse-live check refused the run), and it reproduces the twin stored in the file."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("retwin", ROOT / "bench" / "replay" / "retwin.py")
RT = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(RT)


def test_a_run_with_a_warmup_and_policy_options_is_twinned_again_as_it_was(tmp_path):
    path = ROOT / "bench" / "replay" / "results_fresh_ts015_warmup300_autoscale_w300.json"
    got = RT.twin(str(path), str(tmp_path))
    assert got is not None and set(got["policies"]) == {"warmserve", "autoscale"}
    for r in got["policies"].values():  # the same code and workload: the stored twin again
        assert r["sim_p99_s"] == pytest.approx(r["stored_sim_p99_s"], rel=1e-9)
        assert r["sim_p50_s"] == pytest.approx(r["stored_sim_p50_s"], rel=1e-9)
    assert got["sim_ratio"] == pytest.approx(got["stored_sim_ratio"], rel=1e-9)
