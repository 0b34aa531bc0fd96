"""`warmserve simulate`'s outputs after a review (found in review: the --json was written once, at the end, with a
plain ``open(path, "w")``: Ctrl-C, or an error in a later policy, lost every policy already run and printed a
KeyboardInterrupt traceback, and an interrupt during the write left a truncated file; --alpha nan and --sweep-rate
nan ended in "cannot convert float NaN to integer", naming no flag)."""

from __future__ import annotations

import errno
import json
import os

import pytest

from warmserve import cli
from warmserve.errors import InvalidArgumentError
from warmserve.sim import cli as sim_cli

RUN = ["simulate", "--workload", "paper-code", "--models", "2", "--duration-s", "60", "--rate", "2",
       "--no-search", "--quiet"]


def _half_then_fail(exc):
    """A json.dump that writes half its text and then fails with ``exc``: a full disk, or a Ctrl-C mid-write."""
    real_dumps = json.dumps

    def dump(obj, fp, **kw):
        text = real_dumps(obj, **kw)
        fp.write(text[: len(text) // 2])
        fp.flush()
        raise exc

    return dump


# --------------------------------------------------------------------------------------------- the atomic write

def test_write_json_atomic_writes_what_json_dump_writes(tmp_path):
    from warmserve.outputs import write_json_atomic

    doc = {"b": [1, 2.5, float("inf")], "a": {"x": None}}
    path = tmp_path / "r.json"
    write_json_atomic(str(path), doc, indent=1, default=float)
    assert path.read_text() == json.dumps(doc, indent=1, default=float)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as open(path, "w") made it, not mkstemp's 0600
    assert os.listdir(tmp_path) == ["r.json"]
    # through a symbolic link: its target is written, the link stays (found in review: replaced by a plain file)
    (tmp_path / "runs").mkdir()
    os.symlink(path, tmp_path / "runs" / "latest.json")
    write_json_atomic(str(tmp_path / "runs" / "latest.json"), {"new": 1})
    assert (tmp_path / "runs" / "latest.json").is_symlink() and json.loads(path.read_text()) == {"new": 1}


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_a_write_that_fails_part_way_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, exc):
    from warmserve.outputs import write_json_atomic

    path = tmp_path / "r.json"
    path.write_text('{"old": 1}')
    monkeypatch.setattr(json, "dump", _half_then_fail(exc))
    # an OSError is told as the typed error naming the path (test_outputs_full_disk.py); json.dump fails for the
    # temporary folder's copy too here, so none is kept
    with pytest.raises(InvalidArgumentError if isinstance(exc, OSError) else type(exc)):
        write_json_atomic(str(path), {"new": list(range(100))}, indent=1)
    assert json.loads(path.read_text()) == {"old": 1}
    assert os.listdir(tmp_path) == ["r.json"]


def test_simulate_keeps_the_earlier_json_when_its_write_fails_part_way(tmp_path, monkeypatch, capsys):
    out = tmp_path / "r.json"
    out.write_text('{"earlier": "run"}')
    monkeypatch.setattr(json, "dump", _half_then_fail(OSError(errno.ENOSPC, "No space left on device")))
    rc = cli.main(RUN + ["--policy", "warmserve", "--json", str(out)])
    assert rc == 2 and f"cannot write {out} (No space left on device" in capsys.readouterr().err
    assert json.loads(out.read_text()) == {"earlier": "run"}  # before: half a document, no JSON at all
    assert os.listdir(tmp_path) == ["r.json"]


# --------------------------------------------------------------------------------------------- partial results

def _stop_at(policy: str, exc, monkeypatch):
    """simulate's run_once, raising ``exc`` when ``policy``'s run starts."""
    real = sim_cli.run_once

    def run_once(preset, pol, **kw):
        if pol == policy:
            raise exc
        return real(preset, pol, **kw)

    monkeypatch.setattr(sim_cli, "run_once", run_once)


def test_ctrl_c_keeps_the_finished_policies_and_exits_130_in_one_line(tmp_path, monkeypatch, capsys):
    out = tmp_path / "r.json"
    _stop_at("autoscale", KeyboardInterrupt(), monkeypatch)
    try:
        rc = cli.main(RUN + ["--policy", "warmserve,autoscale,shared", "--json", str(out)])
    except KeyboardInterrupt:  # before: the traceback, and nothing written
        rc = "KeyboardInterrupt"
    err = capsys.readouterr().err
    assert rc == 130, err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("warmserve simulate: interrupted")
    assert str(out) in last and "warmserve" in last and "autoscale, shared" in last, last
    doc = json.loads(out.read_text())
    assert list(doc["policies"]) == ["warmserve"] and doc["missing_policies"] == ["autoscale", "shared"]
    assert doc["policies"]["warmserve"]["requests"] > 0 and doc["args"]["policy"] == "warmserve,autoscale,shared"


def test_ctrl_c_before_any_policy_finished_says_nothing_was_written(tmp_path, monkeypatch, capsys):
    out = tmp_path / "r.json"
    _stop_at("warmserve", KeyboardInterrupt(), monkeypatch)
    try:
        rc = cli.main(RUN + ["--policy", "warmserve", "--json", str(out)])
    except KeyboardInterrupt:
        rc = "KeyboardInterrupt"
    err = capsys.readouterr().err
    assert rc == 130 and "nothing written" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_a_later_policy_s_error_keeps_the_earlier_ones_marked_partial(tmp_path, monkeypatch):
    out = tmp_path / "r.json"
    _stop_at("autoscale", RuntimeError("a bug in the second policy"), monkeypatch)
    with pytest.raises(RuntimeError, match="second policy"):
        cli.main(RUN + ["--policy", "warmserve,autoscale", "--json", str(out)])
    doc = json.loads(out.read_text())
    assert list(doc["policies"]) == ["warmserve"] and doc["missing_policies"] == ["autoscale"]


def test_a_finished_run_is_not_marked_partial(tmp_path):
    out = tmp_path / "r.json"
    assert cli.main(RUN + ["--policy", "warmserve,autoscale", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert list(doc) == ["preset", "models", "cluster", "workload", "args", "policies", "ratios", "wall_s"]
    assert list(doc["policies"]) == ["warmserve", "autoscale"] and "p99_ttft_autoscale_over_warmserve" in doc["ratios"]


# --------------------------------------------------------------------------------------------- non-finite values

@pytest.mark.parametrize("extra,says", [
    (["--alpha", "nan"], "--alpha nan"),
    (["--alpha", "inf"], "--alpha inf"),
    (["--alpha=-inf"], "--alpha -inf"),
    (["--sweep-rate", "nan", "--cold-start-band", "off"], "--sweep-rate nan"),
    (["--sweep-rate", "1,inf", "--cold-start-band", "off"], "--sweep-rate 1,inf"),
])
def test_non_finite_alpha_or_sweep_rate_is_refused_naming_the_flag(extra, says, capsys):
    rc = cli.main(["simulate", "--preset", "artifact-conv", "--policy", "warmserve", "--duration-s", "30",
                   "--no-search", "--quiet"] + extra)
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, (rc, out, err)
    assert err.startswith("warmserve simulate: ") and says in err and "finite" in err, err


def test_the_recipe_refuses_a_non_finite_alpha_or_rate_scale():
    from warmserve.errors import InvalidArgumentError
    from warmserve.workload.recipes import paper_workload, power_law_shares

    with pytest.raises(InvalidArgumentError, match="alpha nan"):
        power_law_shares(3, float("nan"))
    with pytest.raises(InvalidArgumentError, match="rate_scale=nan: must be a finite number > 0"):
        paper_workload("conv", 2, duration_s=60.0, history_days=0, rate_scale=float("nan"))


def test_ctrl_c_during_a_rate_sweep_keeps_the_rate_scales_done(tmp_path, monkeypatch, capsys):
    """A --sweep-rate saves after each rate scale, as the policy runs after each policy (it wrote at the end only,
    so an interrupt kept nothing)."""
    from warmserve.sim import runner

    out = tmp_path / "s.json"
    real = runner.run_once

    def run_once(preset, pol, *, rate_scale, **kw):
        if rate_scale > 0.5:
            raise KeyboardInterrupt()
        return real(preset, pol, rate_scale=rate_scale, **kw)

    monkeypatch.setattr(runner, "run_once", run_once)
    rc = cli.main(["simulate", "--workload", "paper-code", "--models", "2", "--duration-s", "60", "--no-search",
                   "--quiet", "--policy", "warmserve", "--sweep-rate", "1,0.5", "--json", str(out)])
    err = capsys.readouterr().err
    assert rc == 130 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert "rate scales 0.5" in last and "missing_rate_scales: 1.0" in last, last
    doc = json.loads(out.read_text())
    assert doc["sweep"]["rate_scales"] == [0.5] and doc["missing_rate_scales"] == [1.0]
    assert [p["rate_scale"] for p in doc["sweep"]["policies"]["warmserve"]["points"]] == [0.5]
