"""`warmserve simulate --workload servegen` at --start-hour, --history-days and --duration-s the ServeGen data cannot
hold: refused in the flags' terms, with a --start-hour that works. Found in review: `--start-hour 0 --history-days
13` and `--start-hour 0 --duration-s 86400` were refused in the recipe's terms (start_s=1123200, pre_s=600), the
latter suggesting a start_s on day 8, which no flag can give."""

import re

import pytest

from warmserve import cli

RUN = ["--workload", "servegen", "--models", "4", "--gpus", "8", "--policy", "warmserve", "--no-search", "--quiet"]


def _refused(capsys, *flags) -> str:
    rc = cli.main(["simulate", *RUN, *flags])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "start_s=" not in err and "--start-hour" in err, err
    return err


@pytest.mark.parametrize("flags, hour", [
    (["--start-hour", "0", "--history-days", "13", "--duration-s", "60"], "0.1667"),  # room for 13 days: 00:10
    (["--start-hour", "4", "--history-days", "1", "--duration-s", "3600"], "3"),  # m-mid's gap from 04:00
])
def test_a_start_the_data_cannot_hold_names_a_start_hour_that_runs(capsys, flags, hour):
    err = _refused(capsys, *flags)
    assert f"give --start-hour {hour} " in err, err
    given = dict(zip(flags[::2], flags[1::2]), **{"--start-hour": hour})
    rc = cli.main(["simulate", *RUN, *[x for kv in given.items() for x in kv], "--rate", "1"])
    assert rc == 0, capsys.readouterr().err


def test_a_day_long_replay_over_a_gap_says_no_start_fits(capsys):
    err = _refused(capsys, "--start-hour", "0", "--duration-s", "86400", "--history-days", "0")
    assert re.search(r"no --start-hour on ServeGen's last day fits: give fewer --history-days, a shorter "
                     r"--duration-s, or fewer --models", err), err
