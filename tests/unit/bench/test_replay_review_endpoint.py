"""`bench replay` after a review: --endpoint with the flags of a cluster or twin it has not, its policies, the
documented --endpoint command, bad values named by their flag, and served-model names past 26 a checkpoint.

Found in review: with --endpoint, --profile, --sim-*, --start-lead-s, --log-dir and --cpu-workers were accepted and
ignored, and the default --policy warmserve,autoscale replayed the same server twice and printed a P99 ratio of
two policies that never ran and "6 models on 4 CPU workers"; the module's --endpoint example failed to parse
(--models is a count); --start-s nan, --seed=-1 and --max-output-tokens 3000000000 ended in numpy's errors or an
OverflowError traceback, naming no flag; model names past 26 a checkpoint ran into '{|}~' and control characters,
and /metrics parsing lost the model whose label held a '}'."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cli_run import never, own_home, run  # noqa: F401  (own_home: autouse fixture)
from warmserve.bench import replay as R

REPLAY = ["--duration-s", "100", "--time-scale", "0.02", "--rate", "3", "--max-output-tokens", "2", "--drain-s", "2",
          "--quiet"]
README = Path(__file__).resolve().parents[3] / "bench" / "replay" / "README.md"


@pytest.fixture
def server():
    """An OpenAI-compatible server (no /metrics) that streams one token per completion; ``box["posts"]``."""
    box = {"posts": 0}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, status: int, ctype: str, data: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/v1/models":
                self._send(200, "application/json", json.dumps({"object": "list", "data": []}).encode())
            else:
                self._send(404, "application/json", b"{}")

        def do_POST(self):
            box["posts"] += 1
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            msg = {"choices": [{"index": 0, "text": "t", "finish_reason": "length"}],
                   "usage": {"completion_tokens": 1}}
            self._send(200, "text/event-stream", f"data: {json.dumps(msg)}\n\ndata: [DONE]\n\n".encode())

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # shutdown() returns at serve_forever's next poll: 0.5 s apart by default, paid at every teardown
    th = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    th.start()
    box["url"] = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        yield box
    finally:
        srv.shutdown()
        srv.server_close()
        th.join(10)


def _args(*extra):
    p = argparse.ArgumentParser()
    R.add_arguments(p)
    return p.parse_args(list(extra))


# --------------------------------------------------------------------------------------------- --endpoint

@pytest.mark.parametrize("flags", [["--profile", "bench/replay/profile_cpu.json"], ["--sim-size", "llama2-7b"],
                                   ["--sim-compute-scale", "2"], ["--sim-host-cores", "4"],
                                   ["--start-lead-s", "60"], ["--log-dir", "logs"], ["--cpu-workers", "4"]])
def test_endpoint_refuses_the_flags_of_a_cluster_or_twin_even_at_their_defaults(server, flags, monkeypatch, capsys):
    monkeypatch.setattr(R, "run_live", never("the replay"))
    rc, _, err = run(["bench", "replay", "--endpoint", server["url"], *REPLAY, *flags], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert err.split(": ")[1].startswith(flags[0]) and "--endpoint" in err, err
    assert server["posts"] == 0


def test_endpoint_names_every_ignored_flag_at_once(server, monkeypatch, capsys):
    monkeypatch.setattr(R, "run_live", never("the replay"))
    rc, _, err = run(["bench", "replay", "--endpoint", server["url"], *REPLAY, "--profile", "H100-80GB",
                      "--sim-size", "llama2-7b", "--cpu-workers", "2"], capsys)
    assert rc == 2 and "--profile, --sim-size, --cpu-workers:" in err, err


@pytest.mark.parametrize("policy", ["warmserve,autoscale", "x,y", ","])
def test_endpoint_refuses_more_than_one_policy_name(server, policy, monkeypatch, capsys):
    monkeypatch.setattr(R, "run_live", never("the replay"))
    rc, _, err = run(["bench", "replay", "--endpoint", server["url"], *REPLAY, "--policy", policy], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--policy" in err and "label" in err, err
    assert server["posts"] == 0


@pytest.mark.parametrize("label", [None, "vllm"])
def test_endpoint_runs_once_under_its_label_with_no_policy_ratio_nor_cluster(server, label, tmp_path, capsys):
    out = tmp_path / "r.json"
    rc, stdout, err = run(["bench", "replay", "--endpoint", server["url"], *REPLAY, "--json", str(out)]
                          + (["--policy", label] if label else []), capsys)
    assert rc == 0, err
    doc = json.loads(out.read_text())
    name = label or "endpoint"
    assert list(doc["policies"]) == [name] and doc["ratios"] == {} and doc["simulated"] is None
    assert server["posts"] == doc["workload"]["requests"] == doc["policies"][name]["answered"] > 0  # one replay
    assert doc["cluster"]["cpu_workers"] is None and "given_flags" not in doc["args"]
    assert "over_warmserve" not in stdout and "CPU workers" not in stdout, stdout
    assert f"sent to {server['url']}" in stdout, stdout


def _endpoint_examples(text: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"warmserve bench replay (--endpoint [^`\n#]*)", text)]


def test_the_documented_endpoint_commands_parse():
    examples = _endpoint_examples(R.__doc__) + _endpoint_examples(README.read_text())
    assert len(examples) >= 2, examples
    for cmd in examples:
        a = _args(*shlex.split(cmd))  # before: argparse's "--models: invalid int value", SystemExit 2
        R.check_args(a)
        assert a.endpoint and a.served_names


# --------------------------------------------------------------------------------------------- bad values

@pytest.mark.parametrize("flag,value", [("--start-s", "nan"), ("--start-s", "inf"), ("--start-s", "-5"),
                                        ("--seed", "-1"), ("--max-output-tokens", "3000000000"),
                                        ("--max-prompt-tokens", "3000000000")])
def test_bad_values_are_refused_naming_the_flag(server, flag, value, monkeypatch, capsys):
    monkeypatch.setattr(R, "run_live", never("the replay"))
    rc, _, err = run(["bench", "replay", "--endpoint", server["url"], *REPLAY, f"{flag}={value}"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert err.split(": ")[1].startswith(flag), err


# --------------------------------------------------------------------------------------------- model names

def test_model_names_stay_letters_past_26_a_checkpoint():
    assert [R.model_suffix(k) for k in (0, 25, 26, 27, 51, 52, 701, 702)] == \
        ["a", "z", "aa", "ab", "az", "ba", "zz", "aaa"]
    _, served = R.build_workload(_args("--models", "80", "--checkpoints", "llama-20m,qwen2-30m,llama-90m"))
    names = [n for n, _ in served]
    assert len(set(names)) == 80 and all(re.fullmatch(r"(llama-20m|qwen2-30m|llama-90m)-[a-z]+", n) for n in names)
    # up to 26 a checkpoint the names are as before (stored results and the README's commands keep them)
    _, served = R.build_workload(_args())
    assert {n for n, _ in served} == {f"{c}-{s}" for c in R.CHECKPOINTS for s in "ab"}


def test_metrics_parse_for_any_model_name():
    import prometheus_client as prom

    names = ["m-}", 'm-"q"', "m-\\", "m-{a}", "m-\n", "plain"]
    reg = prom.CollectorRegistry()
    hits = prom.Counter("warmserve_prewarm_hits", "h", ("model",), registry=reg)
    misses = prom.Counter("warmserve_prewarm_misses", "m", ("model",), registry=reg)
    for i, n in enumerate(names):
        hits.labels(model=n).inc(1)
        misses.labels(model=n).inc(i)
    got = R.parse_prewarm_metrics(prom.generate_latest(reg).decode())
    assert got == {"prewarm_hits": len(names), "prewarm_misses": sum(range(len(names))), "prewarm_loading_starts": 0,
                   "migrated_requests": 0}
