"""`warmserve bench switch` after a review of its flags and its printout.

Found in review: a bad --cache-threads or --cache-root was met only when the cache part's turn came, after the
activation part had measured (a bare FileNotFoundError for a missing root, --json never written, a
warmserve-bench-cache-* folder left behind), and --cache-threads 0 silently meant the default; `--parts move --plot P`
drew nothing, said nothing and exited 0; the "weights" column (and the plot's labels) showed the size asked for, not
the checkpoint's (--sizes-gib 0.02 measured 0.20 GiB); nothing was printed until every part had run."""

from __future__ import annotations

import argparse
import json
import os

import pytest

from cli_run import never, own_home, run  # noqa: F401  (own_home: autouse fixture)
from warmserve.bench import switch
from warmserve.errors import GiB, InvalidArgumentError

QUICK = ["bench", "switch", "--sizes-gib", "0.02", "--repeats", "1", "--cache-gib", "0.01"]


def _args(tmp_path, **kw) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    switch.add_arguments(p)
    a = p.parse_args([])
    a.__dict__.update(repeats=1, dir=str(tmp_path), **kw)
    return a


def _row(size_gib: float, weights_gib: float) -> dict:
    """An activation_vs_cold_load row as activation_vs_cold returns it (figures made up)."""
    return {"size_gib": size_gib, "weights_bytes": int(weights_gib * GiB), "tensors": 20, "activation_ms": 0.1,
            "activation_map_kv_ms": 0.02, "activation_views_ms": 0.08, "cold_load_ms": 50.0, "ratio": 500.0,
            "repeats": {"activation": 15, "cold_load": 2}}


# ------------------------------------------------------------------------------ 1. the cache part's flags

@pytest.mark.parametrize("flags,named", [
    (["--cache-threads", "-1"], "--cache-threads"),
    (["--cache-threads", "0"], "--cache-threads"),  # before: silently the default
    (["--cache-root", "{tmp}/no-such-root"], "--cache-root"),
    (["--cache-root", "{tmp}/a-file"], "--cache-root"),
])
@pytest.mark.parametrize("part", ["cache", "model"])
def test_bad_cache_flags_are_refused_before_the_first_part(flags, named, part, tmp_path, monkeypatch, capsys):
    (tmp_path / "a-file").write_text("x")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr(switch, "activation_vs_cold", never("the activation part"))
    out = tmp_path / "r.json"
    argv = QUICK + ["--parts", f"activation,{part}", "--checkpoint", str(ckpt), "--json", str(out)]
    rc, _, err = run(argv + [f.format(tmp=tmp_path) for f in flags], capsys)
    assert rc == 2 and named in err, err
    assert "Traceback" not in err and not out.exists()


def test_the_cache_flags_are_not_checked_when_no_part_uses_them(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(switch, "activation_vs_cold", lambda size, *a: _row(size, 0.2))
    rc, _, err = run(QUICK + ["--parts", "activation", "--cache-root", str(tmp_path / "none"), "--cache-threads",
                              "0"], capsys)
    assert rc == 0, err


@pytest.mark.parametrize("part", ["cache_bandwidth", "model_load"])
def test_a_cache_config_that_fails_leaves_no_cache_folder(part, tmp_path):
    """check_args is bypassed here: whatever fails once the folder is made, the folder goes (before: left in the
    --cache-root, /dev/shm by default)."""
    root = tmp_path / "root"
    root.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    a = _args(tmp_path, cache_root=str(root), cache_threads=-1, cache_gib=0.01, checkpoint=str(work))
    with pytest.raises(InvalidArgumentError, match="threads"):
        getattr(switch, part)(a, switch.Device("host", 0), str(work))
    assert os.listdir(root) == []


# --------------------------------------------------------------------------------------- 2. --plot

def test_a_plot_without_the_activation_part_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(switch, "move_and_primitives", never("the move part"))
    png = tmp_path / "p.png"
    rc, _, err = run(["bench", "switch", "--parts", "move", "--repeats", "1", "--plot", str(png)], capsys)
    assert rc == 2 and "--plot" in err and "activation" in err, err
    assert not png.exists()


def test_a_plot_with_every_size_skipped_says_it_was_not_drawn(tmp_path, capsys):
    png = tmp_path / "p.png"
    # more than any machine's memory: the size is skipped, nothing is measured
    rc, out, err = run(["bench", "switch", "--parts", "activation", "--sizes-gib", "100000", "--repeats", "1",
                        "--dir", str(tmp_path), "--plot", str(png)], capsys)
    assert rc == 1 and "skipped 100000 GiB" in out  # nothing measured is a failure (before: 0)
    assert f"--plot {png} not drawn" in err, err  # before: nothing said
    assert not png.exists()


# ------------------------------------------------------------------- 3. the checkpoint's size, not the size asked

def test_the_weights_column_and_the_plot_show_the_checkpoints_size(tmp_path, monkeypatch, capsys):
    import matplotlib.axes

    monkeypatch.setattr(switch, "activation_vs_cold", lambda size, *a: _row(size, {0.02: 0.204, 1.0: 1.02}[size]))
    labels = []
    real = matplotlib.axes.Axes.set_xticks
    monkeypatch.setattr(matplotlib.axes.Axes, "set_xticks",
                        lambda self, ticks, lab=None, **kw: (labels.extend(lab or []), real(self, ticks, lab, **kw)))
    out = tmp_path / "r.json"
    rc, printed, err = run(QUICK[:3] + ["0.02,1", "--repeats", "1", "--parts", "activation", "--json", str(out),
                                        "--plot", str(tmp_path / "p.png")], capsys)
    assert rc == 0, err
    rows = [ln.split()[0] for ln in printed.splitlines() if ln.split() and ln.split()[0].endswith("Gi")]
    assert rows == ["0.204Gi", "1.02Gi"], printed  # before: 0.02Gi and 1Gi
    assert labels == ["0.204 GiB", "1.02 GiB"]
    assert [r["weights_bytes"] for r in json.loads(out.read_text())["activation_vs_cold_load"]] == \
        [int(0.204 * GiB), int(1.02 * GiB)]


# --------------------------------------------------------------------------------- 4. each part as it is done

def test_each_part_is_printed_as_soon_as_it_is_done(tmp_path, monkeypatch, capsys):
    seen = {}

    def activation(size, *a):
        seen.setdefault("before activation", capsys.readouterr().out)
        return _row(size, 0.204)

    def load(*a):
        seen["before load"] = capsys.readouterr().out
        return {"bytes": GiB, "memcpy_gbps": 5.0, "load_buffer_gbps": 4.5, "load_file_gbps": 4.0, "ratio": 0.9,
                "ratio_file": 0.8, "repeats": {"memcpy": 1, "load_buffer": 1, "load_file": 1}}

    monkeypatch.setattr(switch, "activation_vs_cold", activation)
    monkeypatch.setattr(switch, "load_bandwidth", load)
    rc, last, err = run(QUICK + ["--parts", "activation,load"], capsys)
    assert rc == 0, err
    assert "warmserve bench switch: backend=host" in seen["before activation"]
    assert "0.204Gi" in seen["before load"]  # before: nothing until every part had run
    assert last.startswith("load 4.50 GB/s")
