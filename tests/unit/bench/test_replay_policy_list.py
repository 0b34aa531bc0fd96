"""`bench replay --policy` refused up front when it repeats a name or names none, as `warmserve simulate` refuses it
(``sim.cli_checks.parse_policies``). Found in review: `--policy warmserve,warmserve` ran the whole live replay twice
(minutes each) and kept only the second result; `--policy ","` ran nothing, printed an empty table and exited 0."""

import pytest

from cli_run import never, own_home, run  # noqa: F401  (own_home: autouse fixture)
from replay_harness import replay_args
from warmserve.bench import replay, replay_setup
from warmserve.errors import InvalidArgumentError

SMALL = ["--duration-s", "60", "--models", "2", "--quiet"]


@pytest.fixture
def nothing_runs(monkeypatch):
    """Neither the workload nor a live replay nor an endpoint probe may start: the check must come first."""
    monkeypatch.setattr(replay, "build_workload", never("the workload"))
    monkeypatch.setattr(replay, "run_live", never("a live replay"))
    monkeypatch.setattr(replay, "check_endpoint", never("the endpoint probe"))


@pytest.mark.parametrize("policy,says", [
    ("warmserve,warmserve", "warmserve more than once"),
    ("autoscale, warmserve ,autoscale", "autoscale more than once"),
    (",", "names no policy"),
    (" , ", "names no policy"),
    ("", "names no policy"),
])
def test_a_repeated_or_empty_policy_list_exits_2_before_anything_runs(policy, says, nothing_runs, tmp_path, capsys):
    rc, out, err = run(["bench", "replay", "--policy", policy, *SMALL, "--json", str(tmp_path / "r.json")], capsys)
    assert rc == 2, (rc, err)
    assert "--policy" in err and says in err, err
    assert "Traceback" not in err and not out and not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("policy,says", [("vllm,vllm", "vllm more than once"), (",", "names no policy")])
def test_the_endpoint_label_follows_the_same_rule(policy, says, nothing_runs, capsys):
    rc, _, err = run(["bench", "replay", "--endpoint", "http://127.0.0.1:9", "--policy", policy, *SMALL], capsys)
    assert rc == 2 and "--policy" in err and says in err, err


def test_run_policies_refuses_them_itself_and_strips_blanks():
    for policy in ("warmserve,warmserve", ","):
        with pytest.raises(InvalidArgumentError, match="--policy"):
            replay_setup.run_policies(replay_args("--policy", policy))
    assert replay_setup.run_policies(replay_args("--policy", " warmserve, autoscale ")) == ["warmserve", "autoscale"]
    assert replay_setup.run_policies(replay_args("--endpoint", "http://x")) == [replay_setup.ENDPOINT_LABEL]
    assert replay_setup.run_policies(replay_args("--endpoint", "http://x", "--policy", "vllm")) == ["vllm"]


def test_consolidate_for_autoscale_is_refused_before_anything_runs(nothing_runs, capsys):
    """autoscale turns co-serving off, so it fixes consolidate=False (``registry.fixed_options``); found in review:
    the replay's clash check read the overrides alone, and only the `serve` child it started refused the option."""
    rc, _, err = run(["bench", "replay", "--policy", "autoscale", "--policy-option", "consolidate=true", *SMALL],
                     capsys)
    assert rc == 2 and "consolidate" in err and "autoscale" in err and "Traceback" not in err, err
