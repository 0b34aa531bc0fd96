"""`warmserve simulate --seeds 0,1 --plot`: the CDF is the first seed's requests alone, where the table gives the
seeds' medians, and its title says so (found in the review of plots: nothing on the figure said which seed)."""

import pytest

pytest.importorskip("matplotlib")

import warmserve.sim.plot as sim_plot  # noqa: E402
from warmserve import cli  # noqa: E402


def _title(monkeypatch, tmp_path, seeds: str) -> str:
    saved = {}
    monkeypatch.setattr(sim_plot, "save_figure", lambda fig, path, **kw: saved.setdefault("fig", fig))
    rc = cli.main(["simulate", "--workload", "paper-code", "--models", "3", "--duration-s", "60", "--rate", "1",
                   "--tick-s", "5", "--policy", "warmserve", "--no-search", "--seeds", seeds, "--quiet",
                   "--plot", str(tmp_path / "cdf.png")])
    assert rc == 0
    return saved["fig"].axes[0].get_title()


def test_a_cdf_of_several_seeds_names_the_seed_it_draws(monkeypatch, tmp_path):
    title = _title(monkeypatch, tmp_path, "3,4")
    assert "seed 3 of 2" in title and "medians" in title, title


def test_a_cdf_of_one_seed_names_it(monkeypatch, tmp_path):
    title = _title(monkeypatch, tmp_path, "5")
    assert title.endswith("rps, seed 5)") and "medians" not in title, title
