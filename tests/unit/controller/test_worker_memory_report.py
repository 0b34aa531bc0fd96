"""A worker reports its process's resident memory with its stats, and the controller shows it: `/stats`
`workers[].memory` and `warmserve_worker_memory_bytes{worker, kind}`. Found in the memory review: a CPU worker held
272-490 MiB beyond its pool (torch, its engines, a prefill's activations), shown nowhere. A real controller and a
real in-process worker over ZeroMQ; the worker-side figures are checked against memory the test allocates."""

from prometheus_client.parser import text_string_to_metric_families

from warmserve.controller import views
from warmserve.worker.core import process_memory

from controller_harness import in_process_worker, make_controller, run, until


def test_the_figures_are_this_process_s_and_follow_what_it_allocates():
    before = process_memory()
    assert set(before) == {"rss", "anon", "file", "shmem"}
    assert before["rss"] >= before["anon"] > 0 and before["rss"] >= before["file"]
    held = bytearray(96 << 20)  # zero-filled by the allocator: resident, anonymous
    after = process_memory()
    assert after["anon"] - before["anon"] >= 90 << 20, (before, after)
    del held


def test_stats_and_metrics_show_each_workers_resident_memory(model):
    async def main():
        c = make_controller(model)
        ep = await c.start()
        with in_process_worker(ep, 128 << 20):
            try:
                assert await until(lambda: any(w.stats is not None and w.stats.memory for w in c.gpu_workers), 10)
                return views.stats(c)["workers"], c.metrics.registry.render()  # a scrape: collect, then exposition
            finally:
                await c.close(drain=False)

    workers, text = run(main())
    mem = workers[0]["memory"]
    assert set(mem) == {"rss", "anon", "file", "shmem"} and mem["rss"] >= mem["anon"] > 0, mem
    samples = {(s.labels["worker"], s.labels["kind"]): s.value for f in text_string_to_metric_families(text)
               if f.name == "warmserve_worker_memory_bytes" for s in f.samples}
    wid = workers[0]["worker_id"]
    assert {k for w, k in samples if w == wid} == {"rss", "anon", "file", "shmem"}, samples
    assert samples[wid, "rss"] >= samples[wid, "anon"] > 0, samples
