"""`bench replay --reuse-live FILE` read and shape-checked with the other arguments, before the workload is built:
a file that cannot be read, is not JSON, or is not the --json document of a replay is refused in one line naming
--reuse-live and the path, exit 2. Found in review: it was opened after the workload was built, unchecked: a
missing file exited 1 with a bare FileNotFoundError, a non-JSON one with a JSONDecodeError naming neither flag nor
file, and `[1,2]` / `{"policies": 5}` ended in AttributeError / TypeError tracebacks."""

import json

import pytest

from cli_run import never, own_home, run  # noqa: F401  (own_home: autouse fixture)
from replay_harness import replay_args
from warmserve.bench import replay, replay_setup
from warmserve.errors import InvalidArgumentError

SMALL = ["--duration-s", "60", "--models", "2", "--quiet", "--policy", "autoscale"]
GOOD_POLICY = {"requests": 3, "answered": 3, "ttft_p50_s": 0.5, "ttft_p99_s": 2.0, "outcomes": {"ok": 3}}

BAD = [
    ("not json\n", "is not JSON"),
    ("", "is not JSON"),
    ("[1, 2]", "an array, not an object"),
    ('"results"', "a string, not an object"),
    ('{"policies": 5}', '"policies" is a number'),
    ('{"args": {}}', 'no "policies"'),
    ('{"policies": {"autoscale": [1]}}', '"policies"["autoscale"] is an array'),
    ('{"policies": {"autoscale": {"requests": 3}}}', '"policies"["autoscale"] lacks'),
    ('{"policies": {"autoscale": ' + json.dumps({**GOOD_POLICY, "answered": "3"}) + '}}', '"answered"'),
    ('{"policies": {"autoscale": ' + json.dumps({**GOOD_POLICY, "warmup": 1}) + '}}', '"warmup"'),
    ('{"policies": {}, "args": [1]}', '"args" is an array'),
    ('{"policies": {}, "workload": 7}', '"workload" is a number'),
    ('{"policies": {}, "ttft_s": [0.5]}', '"ttft_s" is an array'),
    ('{"policies": {}, "ttft_s": {"autoscale": ["fast"]}}', '"ttft_s"["autoscale"]'),
]


@pytest.fixture
def nothing_runs(monkeypatch):
    monkeypatch.setattr(replay, "build_workload", never("the workload"))
    monkeypatch.setattr(replay, "run_live", never("a live replay"))


@pytest.mark.parametrize("text,says", BAD)
def test_a_file_that_is_no_replay_document_exits_2_naming_flag_and_path(text, says, nothing_runs, tmp_path, capsys):
    path = tmp_path / "earlier.json"
    path.write_text(text)
    rc, out, err = run(["bench", "replay", *SMALL, "--reuse-live", str(path)], capsys)
    assert rc == 2, (rc, err)
    line = err.strip()
    assert "\n" not in line and "Traceback" not in line, err
    assert f"--reuse-live {path}" in line and says in line, err


@pytest.mark.parametrize("make", ["missing", "folder"])
def test_a_file_that_cannot_be_read_exits_2_naming_flag_and_path(make, nothing_runs, tmp_path, capsys):
    path = tmp_path / "earlier.json"
    if make == "folder":
        path.mkdir()
    rc, _, err = run(["bench", "replay", *SMALL, "--reuse-live", str(path)], capsys)
    assert rc == 2 and f"--reuse-live {path}" in err and "cannot be read" in err, err
    assert "Traceback" not in err


def test_the_check_is_typed_and_comes_with_the_argument_checks(tmp_path):
    path = tmp_path / "earlier.json"
    path.write_text('{"policies": 5}')
    with pytest.raises(InvalidArgumentError) as e:
        replay_setup.check_args(replay_args(*SMALL, "--reuse-live", str(path)))
    assert e.value.flag == "--reuse-live" and e.value.path == str(path)


def test_a_replay_document_passes_and_a_null_ttft_list_reads_as_none(tmp_path):
    """The committed results hold ``"ttft_s": null`` (bench/replay/results_ts015_busy.json): read as no TTFTs."""
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps({"policies": {"autoscale": {**GOOD_POLICY, "warmup": {"outcomes": {}}}},
                                "args": {}, "workload": {"requests": 3}, "ttft_s": None}))
    replay_setup.check_args(replay_args(*SMALL, "--reuse-live", str(path)))
    assert replay_setup.read_reuse_live(str(path))["ttft_s"] == {}
