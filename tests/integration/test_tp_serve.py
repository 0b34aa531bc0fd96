"""A tensor-parallel model served by `warmserve serve` on two CPU workers, seen from outside: answered through the
OpenAI client with the tokens of tp = 1, its process group built ahead of the instance, and the loss of a rank
under load (every request ends, the cluster rebuilds the group on the restarted worker and serves again)."""

import os
import signal
import threading
import time

import pytest

import serving

openai = pytest.importorskip("openai")

MODEL = "llama-20m"

server = serving.server_fixture("tp-serve", models=(MODEL,), tp={MODEL: 2}, cpu_workers=2)


def _client(url: str, timeout_s: float = 60):
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=timeout_s)


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            # split at spaces too: a forked worker's command line is one string (setproctitle, worker/forkserver.py)
            return f.read().decode(errors="replace").replace("\0", " ").split()
    except OSError:
        return []


def _reference(prompt_ids: list[int], max_tokens: int) -> list[int]:
    """Greedy tokens at tp = 1, in this process, on one torch thread as a CPU worker runs: with two, on a 2-core
    machine that the workers keep busy, each op waits on the other thread (seconds, not a fraction of one)."""
    import torch

    from warmserve.engine import Engine, SamplingParams, load_model
    from warmserve.memory import PagePool

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pool = PagePool(256 << 20, backend="host")
        lm = load_model(serving.demo_paths((MODEL,))[MODEL], pool).wait()
        try:
            with Engine(lm) as eng:
                return eng.generate([prompt_ids], SamplingParams(max_tokens=max_tokens, ignore_eos=True))[0]
        finally:
            lm.close()
            pool.close()
    finally:
        torch.set_num_threads(threads)


def test_a_tp2_model_is_served_through_the_openai_client_in_a_prewarmed_group(server):
    url, proc, tmp = server
    client = _client(url)
    prompt = [5, 17, 300, 42, 7, 9]
    out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0,
                                    extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 8
    from warmserve.engine.tokenizer import Tokenizer

    # The same tokens as the whole model at tp = 1 (greedy), as text.
    assert out.choices[0].text == Tokenizer(serving.demo_paths((MODEL,))[MODEL]).decode(_reference(prompt, 8))
    _, st = serving.get_json(url + "/stats")
    (inst,) = [i for i in st["instances"] if i["ready"]]
    assert len(inst["workers"]) == 2 and len(set(inst["workers"])) == 2 and inst["group_id"]
    groups = {g["group_id"]: g for g in st["tp_groups"]}
    assert groups[inst["group_id"]]["ready"] and groups[inst["group_id"]]["path"] == "prewarmed"
    assert serving.counter(url, "warmserve_tp_groups_built") >= 1
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                          temperature=0.8, seed=3)
    assert chat.usage.completion_tokens >= 1


def test_killing_a_rank_under_load_ends_every_request_and_the_group_comes_back(server):
    url, proc, tmp = server
    # Its own request starts the instance (instances start on demand), so that this test does not rely on the
    # one before it having run.
    up = _client(url).completions.create(model=MODEL, prompt="up?", max_tokens=1, temperature=0)
    assert up.usage.completion_tokens == 1
    _, st = serving.get_json(url + "/stats")
    (inst,) = [i for i in st["instances"] if i["ready"]]
    by_id = {w["worker_id"]: w for w in st["workers"]}
    follower = by_id[inst["workers"][1]]
    pids = serving.worker_pids(proc.pid)
    results: list[str] = []
    errors: list[BaseException] = []

    def ask(i: int):
        try:
            # 40 tokens at tp = 2 on CPU outlast the kill, which comes as soon as two are in flight (checked below on
            # the metrics), and the ones that resume on the rebuilt group finish soon after (100 tokens took 6 s more
            # there for nothing the test checks).
            r = _client(url, 90).completions.create(model=MODEL, prompt=f"load {i}", max_tokens=40, temperature=0,
                                                    extra_body={"ignore_eos": True})
            results.append(f"ok {r.usage.completion_tokens}")
        except openai.APIError as e:  # the expected outcome for requests that had started on the lost rank
            results.append(f"error {type(e).__name__}: {e}")
        except BaseException as e:  # anything else fails the test in its own thread
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        _, st = serving.get_json(url + "/stats")
        if sum(i["in_flight"] for i in st["instances"]) >= 2:
            break
        time.sleep(0.05)
    # The follower's process: the one started with its worker id (ids name the server's pid, not the worker's: found
    # in review, a fall-back to the last child could kill the leader instead)
    (victim,) = [p for p in pids if follower["worker_id"] in _cmdline(p)]
    os.kill(victim, signal.SIGKILL)
    t_kill = time.monotonic()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a request hung after a rank was killed"
    assert not errors, errors
    assert len(results) == 4, results
    # Every request ended within seconds of the loss, either answered or with a clear error.
    assert time.monotonic() - t_kill < 60
    # The kill cut requests in flight: they went on elsewhere (resumed, or started over) or ended with an error.
    cut = (serving.counter(url, "warmserve_resumed_requests") + serving.counter(url, "warmserve_rerouted_requests")
           + sum(r.startswith("error") for r in results))
    assert cut >= 1, results

    # The worker is restarted, the group rebuilt on the new GPU set, and the model is served again.
    deadline = time.monotonic() + 90
    answered = None
    while time.monotonic() < deadline:
        try:
            answered = _client(url, 30).completions.create(model=MODEL, prompt="back?", max_tokens=3, temperature=0)
            break
        except openai.APIError:
            time.sleep(0.5)
    assert answered is not None and answered.usage.completion_tokens >= 1, (tmp / "serve.log").read_text()[-3000:]
    _, st = serving.get_json(url + "/stats")
    assert any(g["ready"] for g in st["tp_groups"])
    assert serving.counter(url, "warmserve_workers_lost") == 1
    assert serving.wait_idle(url) == []


def test_serve_refuses_a_tp_wider_than_its_machines(tmp_path):
    with pytest.raises(RuntimeError, match=r"needs tp=2 workers on one machine, but the widest machine has 1"):
        serving.start(tmp_path, models=(MODEL,), tp={MODEL: 2}, cpu_workers=1, start_timeout_s=120)


def test_a_rolling_sigterm_of_both_ranks_fails_no_stream(server):
    """Found in review: SIGTERM to one rank, then (its instance rebuilt) to the other, failed every request in
    flight, each counted two worker losses (max_worker_losses_per_request). A rank stops at once on SIGTERM (no
    drain), saying so (Stats.stopping): what it aborts starts over elsewhere, uncounted, and it is no loss."""
    url, proc, tmp = server
    up = _client(url).completions.create(model=MODEL, prompt="up?", max_tokens=1, temperature=0)
    assert up.usage.completion_tokens == 1
    lost_before = serving.counter(url, "warmserve_workers_lost")
    results: list[str] = []
    errors: list[BaseException] = []

    def ask(i: int):
        try:
            # 80 tokens (about 5 s at tp = 2 on CPU) outlast each SIGTERM: the rebuilt instance, on a restarted
            # process, takes them back after the sleep below, and the second SIGTERM comes as soon as it does
            # (rank_pid fails the test, rather than passing it, had they ended before); 160 only took longer.
            r = _client(url, 150).completions.create(model=MODEL, prompt=f"rolling {i}", max_tokens=80,
                                                     temperature=0, extra_body={"ignore_eos": True})
            results.append(f"ok {r.usage.completion_tokens}")
        except openai.APIError as e:
            results.append(f"error {type(e).__name__}: {e}")
        except BaseException as e:  # anything else fails the test in its own thread
            errors.append(e)

    def rank_pid(rank: int) -> int:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # the instance serving (again), its requests on it
            _, st = serving.get_json(url + "/stats")
            ready = [i for i in st["instances"] if i["ready"] and i["in_flight"] >= 1]
            if ready:
                wid = ready[0]["workers"][rank]
                (pid,) = [p for p in serving.worker_pids(proc.pid) if wid in _cmdline(p)]
                return pid
            time.sleep(0.05)
        raise AssertionError("the instance did not serve its requests (again)")

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    os.kill(rank_pid(1), signal.SIGTERM)
    time.sleep(1.0)  # its requests moved off the instance; then the rebuilt one serves them
    os.kill(rank_pid(0), signal.SIGTERM)
    for t in threads:
        t.join(200)
    assert not any(t.is_alive() for t in threads), "a request hung"
    assert not errors, errors
    assert results == ["ok 80", "ok 80"], (results, (tmp / "serve.log").read_text()[-3000:])
    assert serving.counter(url, "warmserve_workers_lost") == lost_before
    assert serving.wait_idle(url) == []
