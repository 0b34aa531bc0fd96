"""The controller's TTFT histogram is observed when a request's first token arrives (as vLLM's
time_to_first_token), once per request, and its generation tokens are counted as they arrive (as vLLM counts each
step's): /metrics scraped during a long generation already counts both."""

from prometheus_client.parser import text_string_to_metric_families

from warmserve import SamplingParams
from warmserve.errors import WarmServeError

import serving

MODEL = "llama-20m"


def _scrape(c) -> dict[tuple, float]:
    """/metrics as the HTTP route serves it (rendered on the controller's loop, as the route does), parsed by
    prometheus_client: {(sample name, model label): value}."""
    async def render():
        return c.controller.metrics.registry.render()

    text = c._run(render(), 30)
    return {(s.name, s.labels.get("model")): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _ttft_count(sample: dict) -> float:
    return sample.get(("warmserve_ttft_seconds_count", MODEL), 0.0)


def _tokens(sample: dict) -> float:
    return sample.get(("warmserve_generation_tokens_total", MODEL), 0.0)


def test_ttft_is_counted_at_the_first_token_once_and_not_for_a_request_that_failed_before_one():
    """Found in review: TTFT was observed when the request ended, so a scrape during a long generation showed
    none for it (and each observation landed at the end of its request)."""
    with serving.demo_cluster(models=(MODEL,), cpu_workers=1, cpu_worker_memory_bytes=512 << 20) as c:
        assert c.generate(MODEL, [5, 17, 300], max_tokens=2, temperature=0).completion_tokens == 2  # the instance is up
        assert _ttft_count(_scrape(c)) == 1

        async def outside_vocabulary():  # refused by the worker's engine: no token ever
            req = await c.controller.submit(MODEL, [5, 10 ** 9, 7], SamplingParams(max_tokens=4))
            try:
                async for _ in req:
                    pass
            except WarmServeError as e:
                return type(e).__name__

        assert c._run(outside_vocabulary(), 60) == "InvalidArgumentError"
        assert _ttft_count(_scrape(c)) == 1

        long = c.stream(MODEL, [5, 17, 300], params=SamplingParams(max_tokens=300, temperature=0.0,
                                                                   ignore_eos=True))
        pieces = iter(long)
        assert next(pieces)
        mid = _scrape(c)  # one scrape: both numbers are of the same moment
        assert mid.get(("warmserve_inflight_requests", MODEL)) == 1, "the generation ended before the scrape"
        assert _ttft_count(mid) == 2, f"TTFT count {_ttft_count(mid)} while the request generates (expected 2)"
        # Found in review: generation tokens were counted at the request's end, so rate() saw none while it ran.
        assert 2 < _tokens(mid) < 2 + 300, f"{_tokens(mid)} generation tokens counted mid-stream (2 before it)"
        rest = list(pieces)
        assert rest and long.finish_reason == "length"
        end = _scrape(c)
        assert _ttft_count(end) == 2  # not again at its end
        assert _tokens(end) == 2 + 300  # each token once: none again at the end
