"""`warmserve bench replay --served-names` without --endpoint is refused before a cluster starts (found in review:
the requests went out under those names to the cluster the run launched, which serves others: 0 answered, every
request an HTTP 404, exit 0)."""

from __future__ import annotations

import pytest

from warmserve import cli


@pytest.mark.parametrize("names", ["foo", "llama-20m-a"])
def test_served_names_without_an_endpoint_is_refused(names, tmp_path, capsys):
    logs = tmp_path / "logs"
    # short windows and span: a bench that does not refuse ends in seconds, not after a 5-minute window
    rc = cli.main(["bench", "replay", "--policy", "warmserve", "--models", "1", "--cpu-workers", "1",
                   "--duration-s", "10", "--rate", "0.5", "--window-s", "10", "--start-lead-s", "1", "--drain-s", "1",
                   "--checkpoints", "llama-20m", "--served-names", names, "--quiet", "--log-dir", str(logs)])
    out, err = capsys.readouterr()
    assert rc == 2 and len(err.strip().splitlines()) == 1, (out, err)
    assert "--served-names" in err and "--endpoint" in err, err
    assert not logs.exists()  # refused before anything started


def test_served_names_that_name_nothing_are_refused(capsys):
    rc = cli.main(["bench", "replay", "--endpoint", "http://127.0.0.1:9", "--served-names", ",", "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 2 and "--served-names ','" in err and "names no model" in err, (out, err)
