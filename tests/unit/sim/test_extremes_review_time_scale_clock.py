"""`warmserve simulate --time-scale` so large that the stretched warm-up (and history days) would start before the
policy's clock does. Found in review: `--preset paper-code --history-days 0 --time-scale 300` (and servegen past
1992) was refused by the simulator as "set the workload's clock0_s to at least ...", naming neither the flag nor a
value that works."""

import pytest

from warmserve import cli


@pytest.mark.parametrize("argv, most", [
    (["--preset", "paper-code", "--history-days", "0", "--time-scale", "300"], "253.5"),
    (["--workload", "servegen", "--models", "2", "--gpus", "8", "--history-days", "13", "--start-hour", "0.2",
      "--time-scale", "2"], "1.2"),
])
def test_a_time_scale_past_the_clock_is_refused_naming_the_flag_and_its_limit(capsys, argv, most):
    rc = cli.main(["simulate", *argv, "--duration-s", "1", "--policy", "warmserve", "--no-search", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"--time-scale {argv[-1]}:" in err and f"give --time-scale {most} or less" in err, err


def test_the_largest_time_scale_named_runs(capsys):
    rc = cli.main(["simulate", "--workload", "servegen", "--models", "2", "--gpus", "8", "--history-days", "13",
                   "--start-hour", "0.2", "--time-scale", "1.2", "--duration-s", "1", "--policy", "warmserve",
                   "--no-search", "--quiet"])
    assert rc == 0, capsys.readouterr().err
