"""Read-only views of a running controller: health, the stats snapshot, Prometheus gauges, pages by role."""

from __future__ import annotations

import msgspec

from warmserve import protocol as P


def health(ctl) -> dict:
    live = [w for w in ctl.gpu_workers if w.ready and not w.draining]
    return {"ok": bool(live) and not ctl.closing, "workers": len(live),
            "instances": sum(1 for i in ctl.instances.values() if i.ready and not any(x.draining for x in i.workers)),
            "closing": ctl.closing}


def stats(ctl) -> dict:
    """A plain-dict snapshot: workers, instances, prewarms, queues (what `Cluster.stats()` returns)."""
    workers = []
    for w in ctl.hub.workers.values():
        s = w.stats
        workers.append({
            "worker_id": w.worker_id, "device": w.device, "alive": w.alive, "ready": w.ready, "draining": w.draining,
            "capacity_bytes": w.capacity_bytes, "in_flight": len(w.gens), "gpu_id": w.gpu_id,
            "pool": msgspec.to_builtins(s.pool) if s is not None else {},
            "models": {m.name: m.state for m in s.models} if s is not None else {},
            # the counters of its machine's host checkpoint cache as this worker saw them (found in review: reported
            # by the workers, shown nowhere, so a cache that did nothing went unseen); {}: no cache
            "host_cache": dict(s.host_cache) if s is not None else {},
            # its process's resident memory by kind, bytes, as it last reported (the memory review: what a CPU worker
            # holds beyond its pool was shown nowhere); {}: a worker that does not report it
            "memory": dict(s.memory) if s is not None else {},
        })
    state = ctl.state
    return {
        "workers": workers,
        "instances": [{"instance_id": i, "model": st.model, "worker": ctl.instances[i].worker.worker_id,
                       "workers": [w.worker_id for w in ctl.instances[i].workers], "gpus": list(st.gpus),
                       "group_id": ctl.instances[i].group_id, "ready": st.ready, "in_flight": st.in_flight,
                       "draining": st.draining,
                       "kv_blocks_total": st.kv_blocks_total, "kv_blocks_mapped": st.kv_blocks_mapped,
                       "shared": _shared(ctl.instances[i].worker, st.model),
                       **_decode(ctl.instances[i].worker, st.model)}
                      for i, st in state.instances.items() if i in ctl.instances] + drained_instances(ctl),
        "prewarms": [{"prewarm_id": p, "model": st.model, "worker": ctl.prewarms[p].worker.worker_id,
                      "progress": st.progress} for p, st in state.prewarms.items() if p in ctl.prewarms],
        "queued": {m: len(q) for m, q in state.queues.items()},
        "tp_groups": ctl.groups.views(),
        # One pass over each counter, not one per model (found in review: 4-7 s per /stats with 64 models).
        **{key: _per_model(ctl, counter) for key, counter in (
            ("prewarm_hits", ctl.metrics.prewarm_hits), ("prewarm_misses", ctl.metrics.prewarm_misses),
            ("prewarm_loading_starts", ctl.metrics.prewarm_loading_starts))},
    }


def _per_model(ctl, counter) -> dict[str, float]:
    got = counter.by_label("model")
    return {m: got.get(m, 0.0) for m in ctl.models}


def drained_instances(ctl) -> list[dict]:
    """/stats entries of the instances on draining workers, listed with ``draining`` true. A drain takes them out of
    the policy's state at once (``draining.on_drain``) while their requests run on there until they end; found in
    review: /stats left them out, and so ``instances[].in_flight`` left out those requests, which
    ``warmserve_inflight_requests`` counts (``draining_requests``) and ``workers[].in_flight`` shows. ``in_flight``:
    the requests on its worker sent to it; GPUs and KV blocks as its worker last reported them (the state's are
    gone)."""
    out = []
    for iid, rec in ctl.instances.items():
        w = rec.worker
        if iid in ctl.state.instances or not (w.alive and w.draining):
            continue
        kv = next((x.kv for x in (w.stats.instances if w.stats is not None else ()) if x.name == rec.model),
                  P.KvStats())
        out.append({"instance_id": iid, "model": rec.model, "worker": w.worker_id,
                    "workers": [x.worker_id for x in rec.workers],
                    "gpus": [x.gpu_id for x in rec.workers if x.gpu_id is not None], "group_id": rec.group_id,
                    "ready": rec.ready, "in_flight": sum(1 for r in w.gens.values() if r.instance_id == iid),
                    "draining": True, "kv_blocks_total": kv.kv_blocks_total, "kv_blocks_mapped": kv.kv_blocks_mapped,
                    "shared": _shared(w, rec.model), **_decode(w, rec.model)})
    return out


def _shared(w, model: str) -> bool:
    """Whether the worker runs the model as a shared (co-served) instance, as its latest stats say."""
    return any(x.name == model and x.shared for x in (w.stats.instances if w.stats is not None else ()))


def _decode(w, model: str) -> dict:
    """The engine's measured decode steps (``WorkerInstance.decode_step_s``, ``decode_batch``, ``decode_steps``) as
    its worker's latest stats report them: what co-serving admits by. Zeros before its first decode step."""
    for x in (w.stats.instances if w.stats is not None else ()):
        if x.name == model:
            return {"decode_step_s": x.decode_step_s, "decode_batch": x.decode_batch, "decode_steps": x.decode_steps}
    return {"decode_step_s": 0.0, "decode_batch": 0.0, "decode_steps": 0}


def collect(ctl) -> None:
    """Set the gauges from the current state (called by the registry before each scrape)."""
    m = ctl.metrics
    for g in (m.queue, m.inflight, m.running, m.waiting, m.instances, m.prewarmed, m.workers, m.pages, m.kv_usage,
              m.worker_kv_usage, m.preemptions, m.decode_step, m.decode_batch, m.worker_memory):
        g.clear()
    state = ctl.state
    ws = list(ctl.hub.workers.values()) if ctl.hub else []
    draining = draining_requests(ws, state.instances)
    for name in ctl.models:
        m.model_series(name)
        queued = state.queued(name)
        sent = [(i, st.in_flight) for i, st in state.instances.items() if st.model == name]
        inflight = sum(n for _, n in sent) + draining.get(name, (0, 0))[0]
        running = sum(running_of(ctl, i, n) for i, n in sent) + draining.get(name, (0, 0))[1]
        m.queue.set(queued, model=name)
        m.instances.set(sum(1 for i in ctl.instances.values() if i.model == name and i.ready), model=name)
        m.inflight.set(inflight, model=name)
        # vLLM's running/waiting: a request sent to an instance may still wait in its engine's queue (behind
        # max_num_seqs, or for KV room). Found in review: every request sent was reported as running.
        m.running.set(running, model=name)
        m.waiting.set(queued + inflight - running, model=name)
        m.prewarmed.set(sum(1 for p in ctl.prewarms.values() if p.model == name and p.loaded), model=name)
    m.workers.set(sum(w.ready and not w.draining for w in ws), state="ready")
    m.workers.set(sum(w.alive and w.draining for w in ws), state="draining")
    # Not the records of lost workers: a loss drops its record at once (found in review: this read 0 always).
    planned = ctl.restarting.keys() & ctl.restarting_by_plan
    m.workers.set(len((ctl.lost_workers.keys() | ctl.restarting.keys()) - planned), state="lost")
    m.workers.set(len(planned), state="restarting")  # left by plan (drained on SIGTERM), its first restart under way
    for w in ws:
        if w.alive and w.stats is not None:
            for role, pages in pages_by_role(w.stats, ctl.models).items():
                m.pages.set(pages, worker=w.worker_id, role=role)
            for kind, n_bytes in w.stats.memory.items():
                m.worker_memory.set(n_bytes, worker=w.worker_id, kind=kind)
            used = total = 0
            for inst in w.stats.instances:
                kv = inst.kv
                used, total = used + kv.kv_blocks_used, total + kv.kv_blocks_total
                m.kv_usage.set(kv_usage(kv.kv_blocks_used, kv.kv_blocks_total), worker=w.worker_id, model=inst.name)
                m.preemptions.set(kv.num_preemptions, worker=w.worker_id, model=inst.name)
                if inst.decode_steps:
                    m.decode_step.set(inst.decode_step_s, worker=w.worker_id, model=inst.name)
                    m.decode_batch.set(inst.decode_batch, worker=w.worker_id, model=inst.name)
            m.worker_kv_usage.set(kv_usage(used, total), worker=w.worker_id)


def running_of(ctl, instance_id: str, in_flight: int) -> int:
    """Of the ``in_flight`` requests the controller has sent to an instance, those in its engine's running batch,
    as its worker's latest Stats say (pushed with each of its heartbeats, so up to a heartbeat interval old): at
    most ``in_flight``, as requests may have ended since. All of them when its worker does not report it (a
    worker from before ``WorkerInstance.running``, or Stats from before the instance started)."""
    rec = ctl.instances.get(instance_id)
    return in_flight if rec is None else reported_running(rec.worker.stats, rec.model, in_flight)


def reported_running(stats, model: str, in_flight: int) -> int:
    """Of ``in_flight`` requests of ``model`` on a worker, those its latest ``stats`` report running: at most
    ``in_flight``; all of them where it reports none (``running_of``)."""
    for inst in stats.instances if stats is not None else ():
        if inst.name == model and inst.running >= 0:
            return min(in_flight, inst.running)
    return in_flight


def draining_requests(workers, instances: dict) -> dict[str, tuple[int, int]]:
    """model -> (in flight, running) of the requests still on draining workers whose instances the policy's state
    no longer has: a drain takes its worker's instances out of that state at once (``draining.on_drain``,
    ``driver.lose_gpus``) while their requests stream on there until they end. Found in review: a request that
    streamed on a draining worker for seconds read 0 in ``warmserve_inflight_requests`` and
    ``warmserve_running_requests``, which docs/metrics.md says count every request sent and not ended. Running as
    the worker last reported it (``reported_running``)."""
    out: dict[str, tuple[int, int]] = {}
    for w in workers:
        if not (w.alive and w.draining):
            continue
        counts: dict[str, int] = {}
        for req in w.gens.values():
            if req.instance_id not in instances:
                counts[req.model] = counts.get(req.model, 0) + 1
        for model, n in counts.items():
            running = reported_running(w.stats, model, n)
            had = out.get(model, (0, 0))
            out[model] = (had[0] + n, had[1] + running)
    return out


def kv_usage(used_blocks: int, total_blocks: int) -> float:
    """The fraction (0..1) of KV blocks holding tokens; 0 for an instance with no KV cache."""
    return used_blocks / total_blocks if total_blocks else 0.0


def pages_by_role(stats: P.Stats, models: dict) -> dict[str, int]:
    """Pages of a worker's pool by role: free, weights of running instances, prewarmed weights, mapped KV cache,
    and "unaccounted": in use by none of those (a leak, if it stays above 0 while the worker is idle)."""
    out = {"free": stats.pool.free_pages}
    running = {i.name for i in stats.instances}
    out["weights"] = sum(m.pages for m in stats.models if m.name in running)
    out["prewarmed"] = sum(m.pages for m in stats.models if m.name not in running)
    out["kv"] = sum(i.kv_pages for i in stats.instances)
    out["unaccounted"] = max(0, stats.pool.total_pages - sum(out.values()))
    return out
