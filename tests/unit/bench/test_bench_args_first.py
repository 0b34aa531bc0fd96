"""`bench switch`, `bench engine`, `bench tp` and `calibrate` refuse a bad flag before measuring anything, in one
line naming the flag (exit 2), and calibrate's fresh-engine parent keeps every line its child printed.

Found in review: `bench switch` found a bad --checkpoint, --cache-gib or --page-mib only when that part's turn came,
after the parts before it had measured for minutes, and lost their results (no --json); `bench engine` ran with
--new-tokens 0, --prompt-tokens 0 or --device gpu and failed late (a traceback, or a message naming no flag);
`bench tp --device cuda:0` ran CPU workers and labelled the results cuda:0; calibrate wrote a profile with
memory_bytes -5, ended `--models ,` in "max() arg is an empty sequence", and its --help said --parallel sets
gpu.compute_scale, which stays 1; its fresh-engine parent lost the child's load_s line when both lines came at once."""

from __future__ import annotations

import argparse

import pytest

from cli_run import never, own_home, run  # noqa: F401  (own_home: autouse fixture)
from warmserve.errors import InvalidArgumentError




def _refused(argv, capsys, *says) -> str:
    rc, out, err = run(argv, capsys)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, (rc, out, err)
    for s in says:
        assert s in err, (s, err)
    return err


def _cuda(monkeypatch, count: int) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


# --------------------------------------------------------------------------------------------- bench switch

SWITCH = ["bench", "switch", "--sizes-gib", "0.01", "--repeats", "1"]


@pytest.fixture
def no_switch_parts(monkeypatch):
    from warmserve.bench import switch

    for part in ("activation_vs_cold", "move_and_primitives", "load_bandwidth", "cache_bandwidth", "model_load",
                 "kv_give_back"):
        monkeypatch.setattr(switch, part, never(f"switch.{part}"))


def _checkpoint(folder, *files):
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f).write_text("{}")
    return str(folder)


@pytest.mark.parametrize("files, says", [
    (None, "no such folder"),
    ((), "no config.json"),
    (("config.json",), "no *.safetensors"),
    (("model.safetensors",), "no config.json"),
])
def test_bench_switch_checks_the_checkpoint_before_the_first_part(files, says, tmp_path, no_switch_parts, capsys):
    path = str(tmp_path / "ckpt") if files is None else _checkpoint(tmp_path / "ckpt", *files)
    out = tmp_path / "r.json"
    _refused(SWITCH + ["--parts", "activation,model", "--checkpoint", path, "--json", str(out)], capsys,
             f"--checkpoint {path}", says)
    assert not out.exists()


def test_bench_switch_refuses_a_checkpoint_that_is_a_file(tmp_path, no_switch_parts, capsys):
    f = tmp_path / "model.safetensors"
    f.write_text("")
    _refused(SWITCH + ["--parts", "model", "--checkpoint", str(f)], capsys, f"--checkpoint {f}", "not a folder")


def test_bench_switch_takes_a_checkpoint_with_a_config_and_weights(tmp_path):
    from warmserve.bench.switch_args import check_args

    p = argparse.ArgumentParser()
    from warmserve.bench import switch

    switch.add_arguments(p)
    path = _checkpoint(tmp_path / "ckpt", "config.json", "model-00001.safetensors")
    a = p.parse_args(["--parts", "model", "--checkpoint", path])
    parts, sizes = check_args(a)
    assert parts == {"model"} and sizes == [0.25, 1, 4]


@pytest.mark.parametrize("cache", ["0", "-1", "0.001", "nan", "inf"])
def test_bench_switch_refuses_a_cache_size_below_one_page_before_the_first_part(cache, tmp_path, no_switch_parts,
                                                                                 capsys):
    out = tmp_path / "r.json"
    _refused(SWITCH + ["--parts", "activation,cache", f"--cache-gib={cache}", "--json", str(out)], capsys,
             "--cache-gib", "2 MiB")
    assert not out.exists()


@pytest.mark.parametrize("page", ["abc", "3", "0", "-2", "2.5"])
def test_bench_switch_refuses_a_page_size_before_the_first_part(page, tmp_path, no_switch_parts, capsys):
    out = tmp_path / "r.json"
    _refused(SWITCH + ["--parts", "activation,move", f"--page-mib={page}", "--json", str(out)], capsys,
             "--page-mib", "multiples of 2 MiB")
    assert not out.exists()


def test_bench_switch_refuses_unknown_parts_and_a_model_part_without_checkpoint(no_switch_parts, capsys):
    _refused(SWITCH + ["--parts", "activation,nope"], capsys, "--parts", "nope")
    _refused(SWITCH + ["--parts", "model"], capsys, "--checkpoint")


# --------------------------------------------------------------------------------------------- bench engine

ENGINE = ["bench", "engine", "--models", "llama-20m", "--no-hf", "--no-new-process", "--repeats", "1", "--batches",
          "1"]


@pytest.mark.parametrize("extra, says", [
    (["--new-tokens", "0", "--prompt-tokens", "4"], "--new-tokens 0: must be at least 2"),
    (["--new-tokens", "1", "--prompt-tokens", "4"], "--new-tokens 1: must be at least 2"),
    (["--prompt-tokens", "0", "--new-tokens", "4"], "--prompt-tokens 0: must be at least 1"),
    (["--prompt-tokens", "-3", "--new-tokens", "4"], "--prompt-tokens -3: must be at least 1"),
    (["--device", "gpu"], "--device must be cpu or cuda:N, got 'gpu'"),
    (["--device", "cuda:x"], "--device must be cpu or cuda:N"),
])
def test_bench_engine_refuses_token_counts_and_devices_before_measuring(extra, says, monkeypatch, capsys):
    from warmserve.bench import engine

    monkeypatch.setattr(engine, "run", never("the benchmark"))
    _refused(ENGINE + extra, capsys, says)


@pytest.mark.parametrize("device, says", [
    ("cuda", "--device cuda: no CUDA device visible"),
    ("cuda:0", "--device cuda:0: no CUDA device visible"),
])
def test_bench_engine_on_cuda_without_a_gpu_is_refused_before_measuring(device, says, monkeypatch, capsys):
    from warmserve.bench import engine

    _cuda(monkeypatch, 0)
    monkeypatch.setattr(engine, "run", never("the benchmark"))
    _refused(ENGINE + ["--device", device], capsys, says, "use --device cpu")


def test_bench_engine_takes_a_visible_cuda_device(monkeypatch):
    from warmserve.bench import engine

    _cuda(monkeypatch, 2)
    p = argparse.ArgumentParser()
    engine.add_arguments(p)
    for device in ("cpu", "cuda", "cuda:1"):
        engine.check_args(p.parse_args(["--models", "llama-20m", "--device", device, "--new-tokens", "2",
                                        "--prompt-tokens", "1"]))
    with pytest.raises(InvalidArgumentError, match="only 2 CUDA device"):
        engine.check_args(p.parse_args(["--models", "llama-20m", "--device", "cuda:2"]))


# --------------------------------------------------------------------------------------------- bench tp

@pytest.mark.parametrize("extra, says", [
    (["--device", "cuda:0"], "--device cuda:0"),
    (["--device", "cuda:1"], "--device cuda:1"),
    (["--device", "gpu"], "--device gpu"),
])
def test_bench_tp_refuses_a_device_it_would_not_run_on(extra, says, monkeypatch, capsys):
    from warmserve.bench import tp

    _cuda(monkeypatch, 4)
    monkeypatch.setattr(tp, "run", never("the tp benchmark"))
    _refused(["bench", "tp", "--repeats", "1"] + extra, capsys, says, "--device cuda", "--device cpu")


@pytest.mark.parametrize("count, extra, says", [
    (0, [], "--device cuda: no CUDA device visible"),
    (1, [], "--tp 2: --device cuda runs one worker per GPU"),
    (2, ["--tp", "3"], "--tp 3: --device cuda runs one worker per GPU"),
])
def test_bench_tp_on_cuda_needs_a_gpu_per_rank(count, extra, says, monkeypatch, capsys):
    from warmserve.bench import tp

    _cuda(monkeypatch, count)
    monkeypatch.setattr(tp, "run", never("the tp benchmark"))
    _refused(["bench", "tp", "--repeats", "1", "--device", "cuda"] + extra, capsys, says)


@pytest.mark.parametrize("extra, says", [
    (["--tp", "1"], "--tp 1: must be at least 2"),
    (["--repeats", "0"], "--repeats 0: must be at least 1"),
])
def test_bench_tp_refuses_counts_before_starting_workers(extra, says, monkeypatch, capsys):
    from warmserve.bench import tp

    monkeypatch.setattr(tp, "run", never("the tp benchmark"))
    _refused(["bench", "tp", "--repeats", "1"] + extra, capsys, says)


def test_bench_tp_refuses_a_tp_the_model_cannot_split_before_starting_workers(monkeypatch, capsys):
    # llama-20m: 6 heads, 2 KV heads. Found in review: refused by the workers, after all 4 had started (~30 s).
    import warmserve.worker
    from warmserve.engine.parallel import TensorParallelError

    monkeypatch.setattr(warmserve.worker, "spawn_local_worker", never("a worker"))
    _refused(["bench", "tp", "--repeats", "1", "--tp", "4"], capsys, "tp=4 does not divide", "use tp in [1, 2]")
    assert issubclass(TensorParallelError, ValueError)  # hence exit 2 with one line


def test_bench_tp_takes_cpu_and_cuda_with_a_gpu_per_rank(monkeypatch):
    from warmserve.bench import tp

    _cuda(monkeypatch, 2)
    p = argparse.ArgumentParser()
    tp.add_arguments(p)
    tp.check_args(p.parse_args([]))
    tp.check_args(p.parse_args(["--device", "cuda"]))


# --------------------------------------------------------------------------------------------- calibrate

CALIBRATE = ["calibrate", "--no-fresh-engine", "--repeats", "1", "--prefill-tokens", "16", "--decode-batches", "1",
             "--decode-steps", "1"]


@pytest.mark.parametrize("extra, says", [
    (["--models", "llama-20m", "--memory-bytes", "-5"], "--memory-bytes -5"),
    (["--models", ","], "--models"),
    (["--models", ""], "--models"),
])
def test_calibrate_refuses_a_negative_memory_and_no_models_before_measuring(extra, says, tmp_path, monkeypatch,
                                                                             capsys):
    from warmserve.bench import calibrate

    monkeypatch.setattr(calibrate, "measure_model", never("measure_model"))
    monkeypatch.setattr(calibrate, "measure_fresh_engine", never("measure_fresh_engine"))
    out = tmp_path / "p.json"
    _refused(CALIBRATE + ["--out", str(out)] + extra, capsys, says)
    assert not out.exists()


def test_calibrate_help_says_what_parallel_does_to_compute_scale():
    from warmserve.bench import calibrate

    p = argparse.ArgumentParser()
    calibrate.add_arguments(p)
    (action,) = [a for a in p._actions if "--parallel" in a.option_strings]
    text = " ".join(action.help.split())
    assert "set gpu.compute_scale" not in text and "compute_scale stays 1" in text, text


def test_calibrate_fresh_engine_keeps_the_load_line_printed_with_the_ready_line(tmp_path, monkeypatch):
    """A child that prints both of its lines at once, before the parent reads: the parent's readline() of the
    ready line pulls both into its buffer, and Popen.communicate() (which reads the raw pipe) never saw the second:
    IndexError after every measurement."""
    from warmserve.bench import calibrate

    child = tmp_path / "child.sh"
    child.write_text("#!/bin/sh\nprintf '%s\\n%s\\n' '{\"ready_in_process_s\": 0.1}' "
                     "'{\"load_s\": {\"m\": 0.25}}'\n")
    child.chmod(0o755)
    monkeypatch.setattr(calibrate.sys, "executable", str(child))
    fresh = calibrate.measure_fresh_engine({"m": "unused"}, 256 << 20, 1, 2, at_once=2)
    assert fresh["load_s"] == {"m": 0.25} and len(fresh["init_s_runs"]) == 4


def test_calibrate_fresh_engine_that_hangs_after_ready_is_killed(tmp_path, monkeypatch):
    from warmserve.bench import calibrate

    child = tmp_path / "child.sh"
    child.write_text("#!/bin/sh\necho '{\"ready_in_process_s\": 0.1}'\nexec sleep 60\n")
    child.chmod(0o755)
    monkeypatch.setattr(calibrate.sys, "executable", str(child))
    monkeypatch.setattr(calibrate, "FRESH_ENGINE_TIMEOUT_S", 1.0)
    with pytest.raises(RuntimeError, match="fresh engine process"):
        calibrate.measure_fresh_engine({"m": "unused"}, 256 << 20, 1, 1)
