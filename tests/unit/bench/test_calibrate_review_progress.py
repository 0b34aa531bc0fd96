"""`warmserve calibrate` after a review of its messages: what its profile is for, each bad flag named with its value
before torch is imported, the host pool checked against the host's memory, progress said while it measures, and a
decode table that dips warned of.

Found in review: the help called the output "a simulator profile" though `warmserve simulate --preset` cannot serve
its models with it (its use is `warmserve bench replay --profile`); --decode-batches 100000 failed making a 1.5 TiB
pool, exit 1, saying to lower capacity_bytes (no calibrate flag); --threads 0, --repeats 0, --parallel 0 and
--decode-steps 0 all printed one joint message naming all four; --models llama-20m,llama-20m measured it twice; argument
errors came after about 6 s of importing torch; nothing was printed while the models and fresh engines were measured;
a decode table with batch 4 at 31.8 ms after batch 2 at 47.0 ms was written with nothing said."""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli_run import never, own_home, run  # noqa: F401  (own_home: autouse fixture)
from warmserve.bench import calibrate as C
from warmserve.bench import calibrate_checks as K

REPO = Path(__file__).resolve().parents[3]
BASE = ["calibrate", "--models", "llama-20m", "--repeats", "1", "--prefill-tokens", "16", "--decode-batches", "1",
        "--decode-steps", "1", "--no-fresh-engine"]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    from warmserve.engine.demo import write_demo_models

    d = tmp_path_factory.mktemp("demo")
    write_demo_models(str(d), ["llama-20m"])
    return str(d)


def _refused(argv, capsys) -> str:
    rc, out, err = run(argv, capsys)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, (rc, out, err)
    return err


# ------------------------------------------------------------------------------ 1. what the profile is for

def test_the_help_and_constants_say_the_profile_is_bench_replay_s_not_simulate_s(capsys):
    p = argparse.ArgumentParser(description="measure the local engine and write a simulator profile")
    C.add_arguments(p)
    text = " ".join(p.format_help().split())
    assert "simulator profile" not in text and "bench replay --profile" in text, text
    assert "simulate --preset" in text, text
    doc = " ".join((REPO / "bench" / "simulate" / "CONSTANTS.md").read_text().split())
    assert "`warmserve calibrate` writes such a profile" not in doc
    assert "it is for `warmserve bench replay --profile`" in doc, doc[:800]


# ------------------------------------------------------------------------------ 3, 4. each flag named

@pytest.mark.parametrize("flag", ["--threads", "--repeats", "--parallel", "--decode-steps"])
def test_a_count_below_one_names_its_own_flag_and_value(flag, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(C, "measure_model", never("measure_model"))
    err = _refused(BASE + ["--out", str(tmp_path / "p.json"), flag, "0"], capsys)
    assert f"{flag} 0: must be >= 1" in err, err
    others = {"--threads", "--repeats", "--parallel", "--decode-steps"} - {flag}
    assert not [o for o in others if o in err], err


def test_a_model_named_twice_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(C, "measure_model", never("measure_model"))
    out = tmp_path / "p.json"
    argv = BASE + ["--out", str(out)]
    argv[argv.index("llama-20m")] = "llama-20m,qwen2-30m,llama-20m"
    err = _refused(argv, capsys)
    assert "--models" in err and "llama-20m named more than once" in err and "--models llama-20m,qwen2-30m" in err
    assert not out.exists()


# ------------------------------------------------------------------------------ 5. before torch

def test_flag_errors_come_before_torch_is_imported(tmp_path):
    # a fresh interpreter: torch is already imported in this one
    cases = [["--threads", "0"], ["--repeats", "-1"], ["--decode-batches", "0"], ["--prefill-tokens", "x"],
             ["--memory-bytes", "-5"], ["--decode-context-tokens", "5"], ["--models", ","],
             ["--models", "llama-20m,llama-20m"]]
    code = ("import json, sys\nfrom warmserve import cli\nfor extra in json.loads(sys.argv[1]):\n"
            "    argv = ['calibrate', '--out', sys.argv[2], '--no-fresh-engine'] + extra\n"
            "    assert cli.main(argv) == 2, extra\n"
            "    assert 'torch' not in sys.modules, ('torch imported before refusing', extra)\n")
    r = subprocess.run([sys.executable, "-c", code, json.dumps(cases), str(tmp_path / "p.json")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == len(cases), r.stderr


# ------------------------------------------------------------------------------ 2. the host pool

def test_a_pool_above_the_host_s_memory_names_the_flags_that_set_it(tmp_path, demo_dir, monkeypatch, capsys):
    import warmserve.memory

    monkeypatch.setattr(C, "host_available_bytes", lambda: 8 << 30)
    monkeypatch.setattr(warmserve.memory, "PagePool", never("making the pool"))
    monkeypatch.setattr(C, "measure_model", never("measure_model"))
    out = tmp_path / "p.json"
    argv = BASE + ["--out", str(out), "--demo-dir", demo_dir]
    argv[argv.index("--decode-batches") + 1] = "1,2,100000"
    err = _refused(argv, capsys)
    assert "--decode-batches (100000)" in err and "--prefill-tokens (16)" in err and "8.0 GiB" in err, err
    assert "1.5 TiB" in err and "capacity_bytes" not in err, err
    assert not out.exists()


def test_the_pool_is_the_device_s_memory_or_what_the_runs_need():
    args = argparse.Namespace(decode_context_tokens=1024, decode_steps=6, parallel=1, no_fresh_engine=True,
                              memory_bytes=0, decode_batches="1,16")
    need = 2 * (80 << 20) + (512 + 16 * 64) * 256 * 1024 + 64 * K.PAGE_BYTES + 4 * (1024 + 8) * 64 * 1024
    assert K.pool_size(args, 80 << 20, 1 << 30, [16, 512], [1, 16], None) == 1 << 30
    pages = -(-need // K.PAGE_BYTES)
    assert K.pool_size(args, 80 << 20, 256 << 20, [16, 512], [1, 16], 1 << 40) == pages * K.PAGE_BYTES
    with pytest.raises(K.InvalidArgumentError, match="lower --decode-context-tokens \\(10000000\\)"):
        K.pool_size(argparse.Namespace(**{**vars(args), "decode_context_tokens": 10 ** 7}), 80 << 20, 256 << 20,
                    [16], [1], 8 << 30)


# ------------------------------------------------------------------------------ 6, 7. progress and dips

def _fake_model(decode_table):
    def measure(path, name, pool, **kw):
        return {"weight_bytes": 80 << 20, "tp": 1, "kv_bytes_per_token": 8192,
                "prefill_table": [[16, 0.02]], "decode_table": decode_table,
                "measured": {"load_s": 0.04, "activation_s": 0.002, "cold_start_first_token_s": 0.06,
                             "prewarmed_first_token_s": 0.01}}
    return measure


def _fake_run(argv, decode_table, demo_dir, monkeypatch, capsys):
    import warmserve.memory

    def fresh(paths, pool_bytes, threads, repeats, at_once=1):
        print("fresh engine measured", file=sys.stderr)
        return {"init_s": 2.0, "init_s_runs": [2.0], "at_once": at_once, "load_s": {n: 0.05 for n in paths}}

    monkeypatch.setattr(warmserve.memory, "PagePool", lambda *a, **k: contextlib.nullcontext())
    monkeypatch.setattr(C, "measure_model", _fake_model(decode_table))
    monkeypatch.setattr(C, "measure_fresh_engine", fresh)
    rc, out, err = run(argv + ["--demo-dir", demo_dir], capsys)
    assert rc == 0, err
    return err


def test_each_phase_and_model_is_said_on_stderr_before_it_runs(tmp_path, demo_dir, monkeypatch, capsys):
    argv = ["calibrate", "--models", "llama-20m", "--repeats", "2", "--prefill-tokens", "16", "--decode-batches",
            "1,2", "--decode-steps", "1", "--out", str(tmp_path / "p.json")]
    err = _fake_run(argv, [[1, 0.010], [2, 0.011]], demo_dir, monkeypatch, capsys)
    assert "warmserve calibrate: measuring llama-20m (1/1)" in err, err
    assert err.index("measuring llama-20m (1/1)") < err.index("load ")  # said before, the figures after
    said = err.index("warmserve calibrate: timing 2 fresh engine process(es)")
    assert said < err.index("fresh engine measured"), err
    assert "warning" not in err, err


def test_a_decode_table_that_dips_is_warned_of_and_written_as_measured(tmp_path, demo_dir, monkeypatch, capsys):
    out = tmp_path / "p.json"
    table = [[1, 0.010], [2, 0.047], [4, 0.0318], [8, 0.050]]  # the reviewer's busy-host figures at 2 and 4
    argv = BASE + ["--out", str(out)]
    argv[argv.index("--decode-batches") + 1] = "1,2,4,8"
    err = _fake_run(argv, table, demo_dir, monkeypatch, capsys)
    (line,) = [ln for ln in err.splitlines() if "warning" in ln]
    assert "llama-20m" in line and "batch 4 took 31.8 ms, batch 2 47.0 ms" in line, line
    assert "batch 8" not in line and "quieter machine" in line and "--decode-steps 1" in line, line
    assert json.loads(out.read_text())["models"]["llama-20m"]["decode_table"] == table


def test_a_dip_within_timer_noise_is_not_warned_of():
    assert K.decode_dips({"m": {"decode_table": [[1, 0.0100], [2, 0.0099], [4, 0.012]]}}, 6) == []
    assert K.decode_dips({"m": {"decode_table": [[1, 0.0100], [2, 0.0090]]}}, 6)
