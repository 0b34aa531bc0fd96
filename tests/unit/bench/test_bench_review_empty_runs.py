"""`warmserve bench switch`, `overhead`, `engine` and `tp` after a review of runs that measured nothing or less
than they said. Found there: `bench switch --sizes-gib 10000 --parts activation --json J` skipped every size, wrote
an empty result and exited 0; --sizes-gib below the smallest checkpoint (the embeddings and one layer) measured
0.204 GiB and recorded the size asked; `bench overhead --duration-s inf` passed its check; `bench engine
--no-new-process --no-hf` printed "nanms" and "nanx" and drew the "new process" series it had not measured; and
`bench tp --memory-gib 0.01 --model qwen2-30m` failed in its workers with an OutOfMemoryError naming model 'm'."""

from __future__ import annotations

import argparse
import json

import pytest

from cli_run import own_home, run  # noqa: F401  (own_home: autouse fixture)
from warmserve.bench import engine, overhead
from warmserve.errors import InvalidArgumentError


def test_switch_with_every_size_skipped_exits_1_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "sk.json"
    # more than any machine's memory: the size is skipped
    rc, printed, err = run(["bench", "switch", "--sizes-gib", "100000", "--parts", "activation", "--repeats", "1",
                            "--dir", str(tmp_path), "--json", str(out)], capsys)
    assert rc == 1, err  # before: 0, and an empty activation_vs_cold_load in the JSON
    assert "skipped 100000 GiB" in printed and "no size of --sizes-gib 100000 was measured" in err, err
    assert f"--json {out} not written" in err and not out.exists()


def test_switch_records_the_size_it_measured_and_says_so(tmp_path, capsys):
    out = tmp_path / "s.json"
    rc, printed, err = run(["bench", "switch", "--sizes-gib", "0.02", "--parts", "activation", "--repeats", "1",
                            "--dir", str(tmp_path), "--json", str(out)], capsys)
    assert rc == 0, err
    row = json.loads(out.read_text())["activation_vs_cold_load"][0]
    assert row["size_gib"] == pytest.approx(0.204, abs=0.001)  # before: 0.02, the size asked
    assert row["asked_size_gib"] == 0.02
    notes = [ln for ln in printed.splitlines() if "note:" in ln]
    assert len(notes) == 1 and "--sizes-gib 0.02 measured 0.204 GiB" in notes[0], printed


@pytest.mark.parametrize("value", ["inf", "nan", "0", "-1"])
def test_overhead_refuses_a_duration_that_is_not_finite_and_positive(value):
    p = argparse.ArgumentParser()
    overhead.add_arguments(p)
    args = p.parse_args(["--duration-s", value])
    with pytest.raises(InvalidArgumentError, match=f"--duration-s {value}: give a finite number > 0"):
        overhead.check_args(args)  # before: inf passed


def test_engine_prints_a_dash_for_what_it_did_not_measure_and_draws_only_what_it_did(tmp_path, monkeypatch,
                                                                                     capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "eng.json"
    rc, printed, err = run(["bench", "engine", "--models", "llama-20m", "--no-new-process", "--no-hf",
                            "--batches", "1", "--repeats", "1", "--json", str(out)], capsys)
    assert rc == 0, err
    assert "nan" not in printed.lower(), printed  # before: "nanms", "nanx" and "nan" columns
    # the TTFT table's row: llama-20m, prewarmed, cold load, new process, cold/warm, new/warm
    ttft = [ln.split() for ln in printed.splitlines() if ln.startswith("llama-20m") and "ms" in ln]
    assert len(ttft) == 1 and ttft[0][3] == "-" and ttft[0][5] == "-", printed
    import warmserve.outputs

    figs = []
    monkeypatch.setattr(warmserve.outputs, "save_figure", lambda fig, path, **kw: figs.append(fig))
    engine.plot(json.loads(out.read_text()), str(tmp_path / "p.png"))
    labels = [ax.get_legend_handles_labels()[1] for ax in figs[0].axes]
    assert labels[1] == ["prewarmed", "cold load"], labels  # before: "new process" too, with no bar
    assert labels[0] == ["warmserve b1"], labels
    doc = json.loads(out.read_text())["models"]["llama-20m"]
    figures = [t.get_text() for t in figs[0].axes[1].texts]  # each bar with its figure, on the log axis
    assert figures == [f"{doc['ttft_prewarmed_s'] * 1e3:.0f}", f"{doc['ttft_cold_load_s'] * 1e3:.0f}"], figures


def test_tp_refuses_a_pool_too_small_naming_the_model_and_the_size_needed(capsys):
    # before: the workers started and one failed with "model 'm' needs 58.0 MiB for its weights", exit 1
    rc, _, err = run(["bench", "tp", "--memory-gib", "0.01", "--model", "qwen2-30m", "--repeats", "1"], capsys)
    assert rc == 2, err
    assert "--memory-gib 0.01: model 'qwen2-30m' needs 118.0 MiB" in err and "'m'" not in err, err
    assert "give at least --memory-gib 0.12" in err, err


def test_tp_runs_with_the_pool_it_asks_for(tmp_path, capsys):
    out = tmp_path / "tp.json"
    rc, _, err = run(["bench", "tp", "--memory-gib", "0.12", "--model", "qwen2-30m", "--repeats", "1",
                      "--json", str(out)], capsys)
    assert rc == 0, err
    assert json.loads(out.read_text())["model"] == "qwen2-30m"
