"""In-place conversion live (issue 11: a universal worker that serves several light models "turns into a dedicated
instance of one of them when it bursts"): three light demo models on two CPU workers, co-served two per worker;
one bursts with no worker free, so the model sharing its worker moves to the other worker (a new co-served
instance there; its old one drains), and the bursting model's instance, alone now, is dedicated where it stands:
the same instance, its KV cap raised from its share to the whole slot, nothing copied, no request lost."""

import concurrent.futures as cf
import threading
import time

import pytest

import serving

openai = pytest.importorskip("openai")

BURST, OTHER, THIRD = "llama-20m", "qwen2-30m", "llama-90m"

# B = 4 so that 12 requests in flight make the burst (12 > 0.8 x 4: it asks for instances of its own); two models
# per host, so that the third model opens a second host for the mover to join; co-serving from the first request.
# A TPOT target of 1 s, not the 0.1 s default sized for GPUs: joins are checked against the measured decode steps,
# and on a loaded CI machine these CPU workers' steps reach 34-72 ms (CI, 2026-12-01: qwen2-30m 37 ms + llama-90m
# 72 ms = 109 ms > 100 ms, so the mover found no host and the burst was never dedicated; the first two models'
# join fills 0.5 / 0.8 of the target, 62.5 ms, which two such steps also pass). The burst here is the load's
# (12 in flight, 3 x B), which no TPOT target changes.
server = serving.server_fixture(
    "coserve-convert", models=(BURST, OTHER, THIRD), cpu_workers=2, cpu_worker_memory_bytes=1536 << 20,
    policy={"instance_capacity": 4, "min_lifetime_s": 1.0, "coserve_max_models": 2, "coserve_always": "true",
            "coserve_tpot_s": 1.0, "colocate_when_oversubscribed": "false"})


def _instances(url: str) -> list[dict]:
    return serving.get_json(url + "/stats")[1]["instances"]


def test_a_bursting_co_served_model_turns_its_worker_into_its_dedicated_instance(server):
    url, proc, tmp = server
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)

    def ask(model: str, n: int = 8) -> int:
        return client.completions.create(model=model, prompt="hello", max_tokens=n,
                                         temperature=0).usage.completion_tokens

    # two models first (they open a host and share it), then the third (the host is full: it opens another)
    for rnd in range(5):
        with cf.ThreadPoolExecutor(3) as pool:
            assert list(pool.map(ask, (BURST, OTHER, THIRD)[: 2 if rnd < 2 else 3])) == [8] * (2 if rnd < 2 else 3)
    before = {i["model"]: i for i in _instances(url) if not i["draining"]}
    assert sorted(before) == sorted((BURST, OTHER, THIRD)), before
    assert before[BURST]["gpus"] == before[OTHER]["gpus"] != before[THIRD]["gpus"], before
    assert all(i["shared"] for i in before.values()), before

    stop = threading.Event()
    answered: list[int] = []
    failures: list[BaseException] = []

    def load(k: int) -> None:
        try:
            while not stop.is_set():
                if k < 12:  # a second or more each: twelve stay in flight until the load stops
                    answered.append(ask(BURST, 100) == 100)
                else:  # the others keep a light, steady demand
                    answered.append(ask((OTHER, THIRD)[k % 2]) == 8)
                    time.sleep(0.5)
        except BaseException as e:  # reaches the test's thread below
            failures.append(e)

    converted = None
    with cf.ThreadPoolExecutor(14) as pool:
        futs = [pool.submit(load, k) for k in range(14)]
        try:
            deadline = time.monotonic() + 90
            while converted is None and time.monotonic() < deadline and not failures:
                snap = _instances(url)
                mine = [i for i in snap if i["instance_id"] == before[BURST]["instance_id"]]
                if mine and not mine[0]["shared"] and mine[0]["kv_blocks_total"] > before[BURST]["kv_blocks_total"]:
                    converted = mine[0]
                time.sleep(0.25)
        finally:
            stop.set()
            for f in futs:
                f.result(timeout=120)
    assert not failures, failures
    assert converted is not None, f"{before[BURST]['instance_id']} was not dedicated: {_instances(url)}"
    assert answered and all(answered), f"{answered.count(False)} of {len(answered)} requests fell short"
    assert converted["gpus"] == before[BURST]["gpus"]  # the same instance on the same worker, nothing restarted
    # when it was dedicated, the model that shared its worker served from the other host (it moved across)
    assert [i["gpus"] for i in snap if i["model"] == OTHER and not i["draining"]] == [before[THIRD]["gpus"]], snap
    m = serving.metrics(url)
    assert m[("warmserve_instances_dedicated_total", (("model", BURST),))] == 1
    assert serving.wait_idle(url) == []
