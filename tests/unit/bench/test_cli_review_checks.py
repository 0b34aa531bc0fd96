"""`calibrate` and the `bench` commands after a review: results written atomically, and what a run would fail on
after minutes (or run on for minutes to no use) refused before anything is measured, naming the flag and the fix.

Found in review: a result file written with a plain ``open(path, "w")`` was left truncated by an interrupt or a full
disk mid-write (``bench replay --reuse-live X.json --json X.json`` lost its only copy of a live run that way);
`bench engine` and `calibrate` measured the models before one whose context a prompt exceeded, then lost them, and
the engine's error named no flag; `bench engine --threads 0` was torch's RuntimeError traceback and `--no-hf` printed
an empty "b1: " line per batch; `bench switch --backend cuda` without a GPU was an AttributeError traceback and
`--sizes-gib 0` or `-1` printed rows of nonsense; `bench replay --endpoint` with a wrong URL replayed the whole
trace, every request failing, and exited 0."""

from __future__ import annotations

import ast
import errno
import json
import os
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cli_run import never, own_home, run  # noqa: F401  (own_home: autouse fixture)
from warmserve import cli

#: every module that writes a JSON result, each through ``outputs.write_json_atomic``
RESULT_WRITERS = ["warmserve.sim.cli_output", "warmserve.bench.replay_report", "warmserve.bench.switch",
                  "warmserve.bench.calibrate", "warmserve.bench.overhead", "warmserve.bench.tp",
                  "warmserve.bench.engine", "warmserve.bench.placement", "warmserve.bench.forecast"]




# --------------------------------------------------------------------------------------------- atomic writes

@pytest.mark.parametrize("module", RESULT_WRITERS)
def test_no_result_file_is_written_with_a_plain_json_dump(module):
    import importlib

    path = importlib.import_module(module).__file__
    with open(path) as f:
        tree = ast.parse(f.read())
    dumps = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr == "dump" and isinstance(n.func.value, ast.Name) and n.func.value.id == "json"]
    assert not dumps, f"{module}: json.dump at lines {dumps}: write results with outputs.write_json_atomic"
    assert "write_json_atomic" in open(path).read()


#: cheap runs of commands that write a result file, their output option last
CHEAP = {
    "bench placement": ["bench", "placement", "--max-gpus", "16", "--repeats", "1", "--rounds", "1", "--json"],
    "bench switch": ["bench", "switch", "--parts", "activation", "--sizes-gib", "0.01", "--repeats", "1", "--json"],
    "calibrate": ["calibrate", "--models", "llama-20m", "--repeats", "1", "--no-fresh-engine", "--prefill-tokens",
                  "16", "--decode-batches", "1", "--decode-steps", "1", "--out"],
}


@pytest.mark.parametrize("command", sorted(CHEAP))
def test_a_result_write_that_fails_part_way_keeps_the_earlier_file(command, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    out = folder / "r.json"
    out.write_text('{"earlier": "run"}')
    real_dump = json.dump

    def half_then_full_disk(obj, fp, **kw):
        # only in the results' folder: the demo checkpoints' config.json a run writes first goes through as ever
        if os.path.dirname(os.readlink(f"/proc/self/fd/{fp.fileno()}")) != str(folder):
            return real_dump(obj, fp, **kw)
        text = json.dumps(obj, **kw)
        fp.write(text[: len(text) // 2])
        fp.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(json, "dump", half_then_full_disk)
    rc, _, err = run(CHEAP[command] + [str(out)], capsys)
    assert rc == 2 and f"cannot write {out} (No space left on device" in err, err
    assert json.loads(out.read_text()) == {"earlier": "run"}  # before: half a document
    assert os.listdir(folder) == ["r.json"]  # no temporary file left behind
    # the results are kept in the temporary folder, which the error names (test_outputs_full_disk.py)
    kept = re.search(r"the results are kept in (\S+)\. Fix", err).group(1)
    try:
        assert json.loads(open(kept).read()) not in ({}, {"earlier": "run"})
    finally:
        os.unlink(kept)


# --------------------------------------------------------------------------------------------- bench engine

def test_bench_engine_refuses_a_prompt_past_a_later_model_s_context_before_measuring(tmp_path, monkeypatch, capsys):
    from warmserve.bench import engine

    monkeypatch.setattr(engine, "measure_model", never("measure_model"))
    out = tmp_path / "eng.json"
    rc, _, err = run(["bench", "engine", "--models", "qwen2-30m", "llama-20m", "--prompt-tokens", "3000",
                       "--new-tokens", "2", "--batches", "1", "--repeats", "1", "--no-hf", "--no-new-process",
                       "--json", str(out)], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    for says in ("--prompt-tokens", "--new-tokens", "3002", "llama-20m", "2048", "max_position_embeddings"):
        assert says in err, (says, err)
    assert not out.exists()


def test_a_prompt_within_every_model_s_context_passes_the_check():
    from warmserve.bench.engine import check_fits_context

    check_fits_context("--prompt-tokens + --new-tokens", 4096, ["qwen2-30m", "llama-90m"], "4094 + 2", "lower them")
    check_fits_context("--prompt-tokens + --new-tokens", 2048, ["llama-20m", "not-a-demo"], "2046 + 2", "lower them")


def test_bench_engine_refuses_zero_threads_naming_the_flag(monkeypatch, capsys):
    from warmserve.bench import engine

    monkeypatch.setattr(engine, "run", never("the benchmark"))
    rc, out, err = run(["bench", "engine", "--models", "llama-20m", "--threads", "0"], capsys)
    assert rc == 2 and out == "" and "--threads 0" in err and len(err.strip().splitlines()) == 1, err


def test_bench_engine_without_transformers_prints_its_own_rates_per_batch(capsys):
    rc, out, err = run(["bench", "engine", "--models", "llama-20m", "--repeats", "1", "--batches", "1", "2",
                         "--no-hf", "--no-new-process", "--prompt-tokens", "4", "--new-tokens", "2"], capsys)
    assert rc == 0, err
    lines = [ln.strip() for ln in out.splitlines() if ln.strip().startswith(("b1:", "b2:"))]
    assert len(lines) == 2, out
    for ln in lines:  # before: "b1:" and nothing after it
        assert "prefill" in ln and "decode" in ln and "tok/s" in ln, ln


# --------------------------------------------------------------------------------------------- calibrate

def test_calibrate_refuses_a_prefill_past_a_later_model_s_context_before_measuring(tmp_path, monkeypatch, capsys):
    from warmserve.bench import calibrate

    monkeypatch.setattr(calibrate, "measure_model", never("measure_model"))
    out = tmp_path / "p2.json"
    rc, _, err = run(["calibrate", "--out", str(out), "--models", "qwen2-30m,llama-20m", "--prefill-tokens",
                       "16,3000", "--no-fresh-engine", "--repeats", "1", "--decode-batches", "1", "--decode-steps",
                       "1"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    for says in ("--prefill-tokens", "3000", "llama-20m", "2048"):
        assert says in err, (says, err)
    assert not out.exists()
    # the decode runs too: a 16-token prompt, then --decode-steps + 2 (found in a review of the check)
    rc, _, err = run(["calibrate", "--out", str(out), "--models", "qwen2-30m,llama-20m", "--prefill-tokens", "16",
                       "--no-fresh-engine", "--repeats", "1", "--decode-batches", "1", "--decode-steps", "2040"],
                      capsys)
    assert rc == 2 and "--decode-steps" in err and "llama-20m" in err and "2058" in err, err
    assert not out.exists()


# --------------------------------------------------------------------------------------------- bench switch

@pytest.mark.parametrize("available,count,device,says", [
    (False, 0, "0", "no CUDA device visible (torch.cuda.is_available() is False); use --backend host"),
    (True, 1, "3", "--device cuda:3: only 1 CUDA device(s) visible"),
    (True, 2, "cuda:5", "--device cuda:5: only 2 CUDA device(s) visible"),  # N or cuda:N, as elsewhere
])
def test_bench_switch_on_cuda_checks_the_device_first(available, count, device, says, monkeypatch, capsys):
    import torch

    from warmserve.bench import switch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(switch, "activation_vs_cold", never("the activation part"))
    try:
        rc, out, err = run(["bench", "switch", "--backend", "cuda", "--device", device, "--parts", "activation",
                             "--sizes-gib", "0.01", "--repeats", "1"], capsys)
    except AttributeError as e:  # before: torch.cuda.set_device on a build without CUDA
        pytest.fail(f"a traceback: {e!r}")
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert says in err, err


@pytest.mark.parametrize("sizes", ["0", "-1", "0.5,-2", "nan"])
def test_bench_switch_refuses_sizes_that_are_no_size(sizes, monkeypatch, capsys):
    from warmserve.bench import switch

    monkeypatch.setattr(switch, "activation_vs_cold", never("the activation part"))
    rc, out, err = run(["bench", "switch", "--parts", "activation", f"--sizes-gib={sizes}", "--repeats", "1"],
                        capsys)
    assert rc == 2 and out == "" and f"--sizes-gib {sizes}" in err and "> 0" in err, err


# --------------------------------------------------------------------------------------------- bench replay

REPLAY = ["--duration-s", "100", "--time-scale", "0.02", "--rate", "3", "--max-output-tokens", "2", "--drain-s", "2",
          "--quiet"]


@pytest.fixture
def http_server():
    """A local HTTP server; ``box["models"]``: the status of GET /v1/models; every POST answers HTTP 500."""
    box = {"models": 200, "posts": 0}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _answer(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/v1/models":
                self._answer(box["models"], {"object": "list", "data": [{"id": "m", "object": "model"}]})
            else:
                self._answer(404, {"error": {"message": "not found"}})

        def do_POST(self):
            box["posts"] += 1
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._answer(500, {"error": {"message": "the model 'x' does not exist", "type": "invalid_request"}})

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


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bench_replay_refuses_an_endpoint_that_does_not_answer_before_replaying(tmp_path, monkeypatch, capsys):
    from warmserve.bench import replay

    monkeypatch.setattr(replay, "run_live", never("the replay"))
    url = f"http://127.0.0.1:{_closed_port()}"
    rc, out, err = run(["bench", "replay", "--endpoint", url, *REPLAY, "--json", str(tmp_path / "r.json")], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--endpoint {url}" in err and "/v1/models" in err and "refused" in err.lower(), err
    assert not (tmp_path / "r.json").exists()


def test_bench_replay_refuses_an_endpoint_that_refuses_the_key(http_server, monkeypatch, capsys):
    from warmserve.bench import replay

    monkeypatch.setattr(replay, "run_live", never("the replay"))
    http_server["models"] = 401
    rc, _, err = run(["bench", "replay", "--endpoint", http_server["url"], "--api-key", "wrong", *REPLAY], capsys)
    assert rc == 2 and "HTTP 401" in err and "--api-key" in err, err


def test_bench_replay_that_nothing_answered_shows_the_errors_and_fails(http_server, tmp_path, capsys):
    out = tmp_path / "r.json"
    rc, _, err = run(["bench", "replay", "--endpoint", http_server["url"], "--served-names", "x", "--policy",
                       "first", *REPLAY, "--json", str(out)], capsys)
    assert rc == 1, err  # before: 0, a table of failures
    assert "first: none of the" in err and "does not exist" in err and "stopped before the next policy" in err, err
    doc = json.loads(out.read_text())
    assert list(doc["policies"]) == ["first"] and doc["policies"]["first"]["answered"] == 0
    assert http_server["posts"] == doc["policies"]["first"]["requests"] > 0


def test_bench_replay_goes_on_when_the_endpoint_has_no_models_route(http_server, monkeypatch, capsys):
    """A server without GET /v1/models (HTTP 404) still answers HTTP: the replay runs, with a note."""
    from warmserve.bench import replay

    class Replayed(Exception):
        pass

    def run_live(*a, **k):
        raise Replayed

    monkeypatch.setattr(replay, "run_live", run_live)
    http_server["models"] = 404
    with pytest.raises(Replayed):
        cli.main(["bench", "replay", "--endpoint", http_server["url"], *REPLAY])
    assert "answered HTTP 404" in capsys.readouterr().err
