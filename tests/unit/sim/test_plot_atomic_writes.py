"""The plots `warmserve simulate` (and `bench replay`) write are written all at once (found in review): a plain
``savefig`` opened the --plot path first and drew into it, so an error or a Ctrl-C mid-write left a truncated PNG
where the previous plot was. Now written to a temporary file beside it and renamed onto it
(``outputs.save_figure``): a failed write leaves the earlier plot as it was and no temporary file."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure  # noqa: E402

from warmserve.sim.plot import plot_rate_sweep, plot_ttft_cdf  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"
POINT = {"offered_rate_rps": 1.0, "ttft_p99_s": 0.5, "slo_attainment": 0.99}
SWEEP = {"policies": {"warmserve": {"points": [POINT, {**POINT, "offered_rate_rps": 2.0}]}}, "slo_target": 0.99}


def _ttft(path):
    plot_ttft_cdf([("warmserve", np.array([0.1, 0.2, 0.5]), "-", None)], str(path), "TTFT")


def _sweep(path):
    plot_rate_sweep(SWEEP, str(path), "sweep")


@pytest.mark.parametrize("draw", [_ttft, _sweep], ids=["ttft_cdf", "rate_sweep"])
@pytest.mark.parametrize("fault", [OSError("No space left on device"), KeyboardInterrupt()], ids=["oserror", "ctrl_c"])
def test_a_plot_write_cut_short_keeps_the_earlier_plot_and_leaves_no_temporary_file(monkeypatch, tmp_path, draw,
                                                                                      fault):
    path = tmp_path / "plot.png"
    draw(path)
    before = path.read_bytes()
    assert before.startswith(PNG)
    real = Figure.savefig

    def cut_short(self, fname, **kw):  # the first bytes of a PNG, then the fault
        if isinstance(fname, (str, os.PathLike)):
            with open(fname, "wb") as f:
                f.write(PNG)
        else:
            fname.write(PNG)
        raise fault

    monkeypatch.setattr(Figure, "savefig", cut_short)
    with pytest.raises(type(fault)):
        draw(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["plot.png"]
    monkeypatch.setattr(Figure, "savefig", real)
    os.chmod(path, 0o640)
    draw(path)  # and a write that finishes replaces it, keeping its mode
    assert path.read_bytes().startswith(PNG) and os.listdir(tmp_path) == ["plot.png"]
    assert os.stat(path).st_mode & 0o777 == 0o640


def test_a_plot_path_without_an_extension_is_written_as_matplotlib_names_it(tmp_path):
    _ttft(tmp_path / "plot")  # as savefig did: matplotlib's default format, its extension added
    assert os.listdir(tmp_path) == ["plot.png"] and (tmp_path / "plot.png").read_bytes().startswith(PNG)


def test_a_plot_through_a_link_writes_its_target(tmp_path):
    target = tmp_path / "real.png"
    target.write_bytes(b"old")
    (tmp_path / "link.png").symlink_to(target)
    _ttft(tmp_path / "link.png")
    assert (tmp_path / "link.png").is_symlink() and target.read_bytes().startswith(PNG)
    assert sorted(os.listdir(tmp_path)) == ["link.png", "real.png"]
