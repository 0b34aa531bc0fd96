"""A flooded model takes the first tick's spare slot live (``PolicyConfig.layout_follows_load``): three demo models on
two CPU workers, no history, so the layout weighs them alike and its spare slot (four slots, three models) goes to
qwen2-30m by tie-break. Found in the overload review: 200 clients of llama-20m kept its one instance for a whole
flood while qwen2-30m's second instance idled on the other worker. Here 48 clients of llama-20m: the spare becomes
a llama-20m instance on the other worker, the log says so, every request is answered and each quiet model keeps an
instance."""

import threading
import time

import pytest

import serving

openai = pytest.importorskip("openai")

MODELS = ("llama-20m", "qwen2-30m", "llama-90m")
CLIENTS = 48

server = serving.server_fixture("colocation-follows", models=MODELS, cpu_workers=2)


def _instances(url: str) -> list[tuple[str, tuple[int, ...]]]:
    _, st = serving.get_json(url + "/stats")
    return sorted((i["model"], tuple(i["gpus"])) for i in st["instances"])


def test_a_flooded_model_takes_the_spare_slot_of_a_quiet_one(server):
    url, proc, tmp = server
    before = _instances(url)
    assert [m for m, _ in before].count("llama-20m") == 1 and [m for m, _ in before].count("qwen2-30m") == 2, before
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
    stop = threading.Event()
    codes: list[int] = []
    errors: list[BaseException] = []

    def flood(i: int) -> None:
        try:
            while not stop.is_set():
                r = client.completions.create(model="llama-20m", prompt=f"hello {i}", max_tokens=32, temperature=0)
                codes.append(r.usage.completion_tokens)
        except BaseException as e:  # reaches the test's thread below
            errors.append(e)

    threads = [threading.Thread(target=flood, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            now = _instances(url)
            if [m for m, _ in now].count("llama-20m") == 2:
                break
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert not errors, errors[:3]
    assert codes and all(n == 32 for n in codes), codes[:5]
    models = [m for m, _ in now]
    assert models.count("llama-20m") == 2 and models.count("qwen2-30m") == 1 and "llama-90m" in models, now
    assert len({g for m, gpus in now if m == "llama-20m" for g in gpus}) == 2, now  # one on each worker
    said = [ln for ln in (tmp / "serve.log").read_text().splitlines() if "takes the idle spare slot" in ln]
    assert len(said) == 1 and "llama-20m, busy, takes the idle spare slot of qwen2-30m" in said[0], said
    assert serving.wait_idle(url) == []
