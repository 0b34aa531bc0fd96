"""bench/simulate/issue11/scale_in_trade.py: paired_option.py files read into per-cell medians, checked for the
cells it draws, tabled and plotted."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from warmserve.errors import InvalidArgumentError

_DIR = Path(__file__).resolve().parents[3] / "bench" / "simulate" / "issue11"
_spec = importlib.util.spec_from_file_location("scale_in_trade", _DIR / "scale_in_trade.py")
ST = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ST)

CELLS = [(p, cv) for p in ("paper-conv", "paper-code", "artifact-conv", "artifact-code") for cv in (None, 4.0)]


def _run(p99_s: float, gpu_s: float) -> dict:
    return {"ttft_p99_s": p99_s, "ttft_p50_s": 0.1, "slo_attainment": 1.0, "gpu_seconds": gpu_s, "tpot_p50_s": 0.02}


def _paired(path: Path, ratios: dict, cells=CELLS) -> str:
    """A paired_option.py document whose P99 ratios per seed are ``ratios[cell]`` (1.0 where absent), the option's
    runs at 1.1x the GPU-seconds."""
    rows = []
    for preset, cv in cells:
        r = ratios.get((preset, cv), [1.0, 1.0, 1.0])
        rows.append({"preset": preset, "burst_cv": cv, "seeds": list(range(len(r))),
                     "without": [_run(2.0, 100.0) for _ in r], "with": [_run(2.0 * x, 110.0) for x in r],
                     "p99_ratio": r, "slo_difference": [0.0 for _ in r]})
    path.write_text(json.dumps({"policy": "warmserve", "options": {"x": 1}, "rows": rows}))
    return str(path)


def test_cells_are_medians_over_seeds_with_the_seeds_worse_and_the_gpu_seconds_ratio(tmp_path):
    f = _paired(tmp_path / "a.json", {("paper-conv", 4.0): [0.5, 0.4, 1.2], ("paper-code", None): [1.1, 1.0, 0.9]})
    got = ST.cells(f)
    assert got[("paper-conv", 4.0)] == pytest.approx({"p99": 0.5, "gpu_s": 1.1, "worse": 1, "seeds": 3})
    assert got[("paper-code", None)]["p99"] == pytest.approx(1.0) and got[("paper-code", None)]["worse"] == 1
    table = ST.table(ST.parse_inputs([f"opt=2={f}"]))  # the label is what comes before the last "="
    assert "| opt=2 | 1.00x (1 of 3) | 0.50x (1 of 3) |" in table and "1.100-1.100x" in table


def test_inputs_without_a_label_or_a_drawn_cell_are_refused_naming_the_fix(tmp_path):
    with pytest.raises(InvalidArgumentError, match="LABEL=FILE"):
        ST.parse_inputs([str(tmp_path / "a.json")])
    short = _paired(tmp_path / "b.json", {}, cells=[c for c in CELLS if c != ("artifact-conv", 4.0)])
    with pytest.raises(InvalidArgumentError, match="artifact-conv.*--burst-cvs none,4"):
        ST.parse_inputs([f"b={short}"])


def test_the_plot_is_written_and_its_title_names_an_option_below_1_on_every_axis(tmp_path, monkeypatch):
    win = _paired(tmp_path / "w.json", {c: [0.8, 0.8, 0.8] for c in CELLS})
    trade = _paired(tmp_path / "t.json", {("paper-code", None): [1.5] * 3, ("paper-conv", 4.0): [0.5] * 3})
    titles = []
    import matplotlib.figure
    real = matplotlib.figure.Figure.suptitle
    monkeypatch.setattr(matplotlib.figure.Figure, "suptitle",
                        lambda self, t, **kw: (titles.append(t), real(self, t, **kw))[1])
    out = tmp_path / "trade.png"
    ST.plot(ST.parse_inputs([f"wins={win}", f"trades={trade}"]), str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert titles and titles[0].endswith(": wins"), titles


def test_the_command_line_prints_the_table_and_exits_2_on_a_missing_file(tmp_path, monkeypatch, capsys):
    f = _paired(tmp_path / "a.json", {})
    monkeypatch.setattr(sys, "argv", ["scale_in_trade.py", f"a={f}"])
    ST.main()
    assert capsys.readouterr().out.startswith("| option |")
    monkeypatch.setattr(sys, "argv", ["scale_in_trade.py", f"a={tmp_path / 'none.json'}"])
    with pytest.raises(SystemExit) as e:
        ST.main()
    assert e.value.code == 2
