"""`bench replay --profile P --json P` (or `--plot P`): refused before anything runs, the profile kept. Found in
review of `simulate`, which replaced its cost profile with its results; the replay took the same pair."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from warmserve import cli
from warmserve.bench import replay

PROFILE = Path(__file__).resolve().parents[3] / "bench" / "replay" / "profile_cpu.json"
SHORT = ["bench", "replay", "--policy", "warmserve", "--duration-s", "120", "--time-scale", "0.05", "--rate", "2",
         "--drain-s", "1", "--quiet"]


class _Ran(Exception):
    pass


def _no_run(args):
    raise _Ran("the replay went on to run its policies: it was not refused")


@pytest.mark.parametrize("flag", ["--json", "--plot"])
def test_an_output_naming_the_profile_is_refused_and_the_profile_kept(flag, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WARMSERVE_HOME", str(tmp_path / "home"))
    # the first step after the checks: were the pair taken, the test ends here instead of starting a cluster
    monkeypatch.setattr(replay, "run_policies", _no_run)
    profile = tmp_path / "profile"  # no extension: a --plot path ending .json is refused for that alone
    shutil.copy(PROFILE, profile)
    before = profile.read_bytes()
    rc = cli.main(SHORT + ["--profile", str(profile), flag, str(tmp_path / "." / "profile")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "--profile" in err and flag in err and "one file" in err
    assert profile.read_bytes() == before
