"""`warmserve simulate --trace CSV`: the paper and artifact workloads replay a user's own trace in the Azure 2023
layout instead of the bundled one (the recipe, models, cluster and --rate stay the preset's), the JSON names the
file by its SHA-256, and a trace that cannot be replayed is refused in one line naming the flag or the row."""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json

import numpy as np
import pytest

from warmserve import cli
from warmserve.sim import cli as sim_cli

#: every prompt of the test trace has this many tokens, every answer ANSWER: no bundled request is so uniform
PROMPT, ANSWER = 17, 5


def _trace(path, span_s: float = 2400.0, rate_rps: float = 2.0, seed: int = 1) -> str:
    """A trace in the Azure 2023 layout: Poisson arrivals over ``span_s`` from 09:00, PROMPT and ANSWER tokens."""
    rng = np.random.default_rng(seed)
    t0 = datetime.datetime(2024, 5, 10, 9, 0, 0)
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for s in np.cumsum(rng.exponential(1 / rate_rps, int(span_s * rate_rps * 1.2))):
        if s < span_s:
            rows.append(f"{(t0 + datetime.timedelta(seconds=float(s))):%Y-%m-%d %H:%M:%S.%f}0,{PROMPT},{ANSWER}")
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def _preset(argv: list[str]):
    p = argparse.ArgumentParser()
    sim_cli.add_arguments(p)
    return sim_cli.build_preset(p.parse_args(argv))


def test_the_paper_recipe_replays_the_given_trace_and_the_json_names_its_bytes(tmp_path, capsys):
    trace = _trace(tmp_path / "mine.csv")
    argv = ["--workload", "artifact-code", "--duration-s", "120", "--history-days", "0"]
    mine, bundled = _preset(argv + ["--trace", trace]).build(1.0, 0), _preset(argv).build(1.0, 0)
    # the requests come from the file: its lengths, at the preset's rate (24 rps, not the file's 2)
    assert set(mine.trace.prompt_tokens.tolist()) == {PROMPT} and set(mine.trace.output_tokens.tolist()) == {ANSWER}
    assert len(set(bundled.trace.prompt_tokens.tolist())) > 100
    assert len(mine.trace) == pytest.approx(len(bundled.trace), rel=0.2)
    # the preset's own 1200 s too (--duration-s above rebuilds the recipe: cli._rewrap)
    whole = _preset(["--preset", "paper-conv", "--history-days", "0", "--trace", trace]).build(1.0, 0)
    assert set(whole.trace.prompt_tokens.tolist()) == {PROMPT}

    out = tmp_path / "r.json"
    rc = cli.main(["simulate", "--policy", "warmserve", "--rate", "4", "--no-search", "--quiet", "--json", str(out),
                   "--trace", trace] + argv)
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "artifact-code on mine.csv: 4 models" in printed
    doc = json.loads(out.read_text())
    digest = hashlib.sha256(open(trace, "rb").read()).hexdigest()
    assert f"sha256 {digest}" in doc["workload"]["meta"]["source"] and trace in doc["workload"]["meta"]["source"]
    assert doc["args"]["trace"] == trace
    assert doc["policies"]["warmserve"]["completed"] == doc["workload"]["requests"] > 0


def test_a_bundled_run_still_cites_the_azure_trace():
    w = _preset(["--workload", "paper-conv", "--duration-s", "60", "--history-days", "0"]).build(1.0, 0)
    assert w.meta["source"].startswith("Azure LLM inference trace 2023")


@pytest.mark.parametrize("argv, says", [
    (["--workload", "servegen"], "--trace {t}: only the paper and artifact workloads"),
    (["--preset", "scale", "--workload", "paper-conv"], "--trace {t}: only the paper and artifact workloads"),
    (["--workload", "paper-conv", "--trace", "{d}/none.csv"], "--trace {d}/none.csv: no such file"),
    (["--workload", "paper-conv", "--trace", "{d}"], "--trace {d}: not a file"),
    (["--workload", "paper-conv", "--trace", "{d}/bad.csv"], "{d}/bad.csv, line 3, column ContextTokens: 'abc'"),
    (["--workload", "paper-conv", "--duration-s", "2000", "--history-days", "0"],
     "--duration-s 2000: the --trace mine.csv trace covers 2399 s"),  # its last arrival, from its first
])
def test_a_trace_that_cannot_be_replayed_is_refused_in_one_line(tmp_path, capsys, argv, says):
    t = _trace(tmp_path / "mine.csv")
    (tmp_path / "bad.csv").write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                                      "2024-05-10 09:00:00.0,3,4\n2024-05-10 09:00:01.0,abc,4\n")
    argv = [a.format(t=t, d=tmp_path) for a in argv]
    if "--trace" not in argv:
        argv += ["--trace", t]
    rc = cli.main(["simulate", "--policy", "warmserve", "--no-search", "--quiet"] + argv)
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, (rc, out, err)
    assert err.startswith("warmserve simulate: ") and says.format(t=t, d=tmp_path) in err, err
