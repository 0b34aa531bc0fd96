"""An output path of "-" is refused, pointing to /dev/stdout; a plot path that is a folder is told a plot's name.
Found in review: `simulate --json -` ran, exit 0, and wrote its JSON into a file named "-" in the current folder;
`--plot DIR` was told to give "DIR/out.json"."""

from __future__ import annotations

import os

from warmserve import cli

RUN = ["simulate", "--workload", "paper-conv", "--gpus", "2", "--models", "1", "--duration-s", "5", "--rate", "1",
       "--policy", "warmserve", "--seeds", "0", "--no-search", "--quiet"]


def test_a_dash_json_path_is_refused_before_the_run_and_writes_no_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main([*RUN, "--json", "-"]) == 2
    err = capsys.readouterr().err
    assert "--json -: names a file called '-' here, not the standard output" in err and "/dev/stdout" in err
    assert os.listdir(tmp_path) == []


def test_a_folder_given_as_a_plot_is_told_a_plot_file(tmp_path, capsys):
    assert cli.main([*RUN, "--plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"--plot {tmp_path}: is a folder; give a file path, e.g. {tmp_path / 'plot.png'}" in err
