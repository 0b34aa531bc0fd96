"""A start from a prewarm still loading (``placement.Board.choose_for_instance`` takes one where no loaded prewarm
fits) waits out the rest of its copy: the live controller counts it apart (``prewarm_loading_starts``), not as a
hit, as the simulator does (``starts_from_loading_prewarm``, left out of its hit rate's hits). Found in review: it
was counted a hit, so `bench replay` printed a live hit rate and a simulated one, one name for two measures."""

import time

import serving

from warmserve.bench.replay_setup import parse_prewarm_metrics
from warmserve.policy import actions as A

MODEL = "qwen2-30m"


def test_a_start_from_a_loading_prewarm_is_not_a_hit():
    with serving.demo_cluster(models=("llama-20m", MODEL), cpu_workers=2) as c:
        ctl = c.controller

        async def prewarm_then_start():
            st = ctl.driver.state
            busy = {g for i in st.instances.values() for g in i.gpus} | {g for p in st.prewarms.values()
                                                                          for g in p.gpus}
            gpu = next(w.gpu_id for w in ctl.gpu_workers if w.gpu_id not in busy)
            ctl.driver.apply(A.Prewarm("loading-pw", MODEL, (gpu,), 1.0), ctl.now_s())
            progress = st.prewarms["loading-pw"].progress
            ctl.driver.apply(A.StartInstance("from-loading", MODEL, (gpu,), prewarm_id="loading-pw"), ctl.now_s())
            return progress

        before = c.stats()
        assert c._run(prewarm_then_start(), 30) < 1.0  # the start took it while it was loading
        deadline = time.monotonic() + 60
        while not any(i["instance_id"] == "from-loading" and i["ready"] for i in c.stats()["instances"]):
            assert time.monotonic() < deadline, c.stats()
            time.sleep(0.05)
        after = c.stats()
        delta = {k: after[k][MODEL] - before[k][MODEL]
                 for k in ("prewarm_hits", "prewarm_misses", "prewarm_loading_starts")}
        assert delta == {"prewarm_hits": 0.0, "prewarm_misses": 0.0, "prewarm_loading_starts": 1.0}, delta

        async def render():
            return ctl.metrics.registry.render()

        # /metrics, as `bench replay` reads it: the start counted as loading there too
        counted = parse_prewarm_metrics(c._run(render(), 30))
        assert (counted["prewarm_hits"], counted["prewarm_loading_starts"]) == (0.0, 1.0), counted
