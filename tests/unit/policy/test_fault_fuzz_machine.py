"""The real policy and driver over the instant executor (instances ready only when the test says), fuzzed with
faults and membership changes mixed into the load: requests submitted, finished (on draining instances too),
withdrawn and refused (``reroute``); instances ready late or never, failed while starting or serving; prewarm loads
failed; servers' GPUs lost, their requests started over as the controller does (``Controller._on_lost``), GPUs
added back; an executor call that loses its worker inside the driver's call, as a live send that fails does; time
advanced in ticks, sometimes past a forecast window. Clusters under- and over-subscribed (the first
tick's colocation, ``layout_follows_load``), with history for some models or none. After every step the
bookkeeping must agree: each request in exactly one place, in-flight counts, memory, lost GPUs empty, GPUs shared
only by co-served instances, no request left waiting beside an idle instance of its model.

``FAULT_FUZZ_EXAMPLES=N`` runs N examples of longer runs (scratch exploration); the suite runs a few."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from warmserve.errors import WarmServeError, WorkerLostError
from warmserve.policy import PolicyConfig, make_policy
from warmserve.policy.colocation import UnplacedModelError
from warmserve.policy.driver import PolicyDriver
from warmserve.policy.instant import InstantExecutor
from warmserve.policy.state import ClusterState, GpuState, ModelInfo, ServerState

GiB = 1 << 30
T0 = 2 * 86400.0
P = 288
#: (policy name, options): the variants fuzzed.
VARIANTS = [("warmserve", {}), ("warmserve", {"coserve_always": True}), ("autoscale", {}), ("shared", {})]
#: Policies that lay every model out at their first tick (``baselines.StaticPolicy``).
STATIC = ("shared", "dedicated")
GPU_SIZES = [16 * GiB, 24 * GiB, 40 * GiB, 80 * GiB]
#: Live GPUs at most after additions (keeps a step cheap).
MAX_LIVE = 10
#: (name, weights, KV bytes a token, context): the demo server's three models as its controller reads them, and two
#: more of their kind.
DEMO = [("llama-20m", 75_523_584, 8192, 2048), ("qwen2-30m", 117_508_096, 16384, 4096),
        ("llama-90m", 352_398_336, 24576, 4096), ("llama-60m", 250_000_000, 16384, 2048),
        ("qwen2-40m", 160_000_000, 16384, 4096)]
EXAMPLES = int(os.environ.get("FAULT_FUZZ_EXAMPLES", "0"))
#: Steps checked (scratch counts: the explored total).
STEPS = [0]


def _model(name: str, tp: int, weights_gib: float, kv_per_token: int, ctx: int) -> ModelInfo:
    return ModelInfo(name, int(weights_gib * GiB), tp, kv_per_token, 0.05, 0.02, max_context_tokens=ctx)


def _history(models, seed: int):
    t = np.arange(2 * P)
    out = {}
    for k, m in enumerate(models):
        base = (5 + 10 * seed % 7) + (4 + k) * np.sin(2 * np.pi * (t + 40 * k) / P) + 4 + k
        out[m.name] = (t * 300.0, base, base * 2.5)
    return out


class FaultyExecutor(InstantExecutor):
    """The instant executor whose armed call loses the worker it sends to, as a live send that fails does: the
    loss is handled inside the call (``Controller._on_lost``: every request that ran on that GPU starts over,
    oldest first, and ``driver.lose_gpus``), in the middle of whatever the driver was doing."""

    def __init__(self):
        super().__init__(start_ready=False)
        #: (call name, calls of it to let pass first), or None.
        self.armed: tuple[str, int] | None = None
        self.prefilled: set = set()
        self.prompt: dict = {}
        self.model_of: dict = {}
        self.now = 0.0
        self.fired = 0
        #: Requests failed as the executor fails them (not through ``fail``: a lost worker's, an engine's).
        self.ended: set = set()

    def _maybe_lose(self, call: str, gpus) -> None:
        if self.armed is None or self.armed[0] != call or not gpus:
            return
        if self.armed[1] > 0:
            self.armed = (call, self.armed[1] - 1)
            return
        self.armed = None
        self.fired += 1
        lose_worker(self, self.driver, [gpus[0]], self.now)

    def load_prewarm(self, prewarm, now_s):
        super().load_prewarm(prewarm, now_s)
        self._maybe_lose("load_prewarm", prewarm.gpus)

    def drop_prewarm(self, prewarm, evicted, now_s):
        super().drop_prewarm(prewarm, evicted, now_s)
        self._maybe_lose("drop_prewarm", prewarm.gpus)

    def start_instance(self, inst, act, prewarm, now_s):
        super().start_instance(inst, act, prewarm, now_s)
        self._maybe_lose("start_instance", inst.gpus)

    def stop_instance(self, inst, now_s):
        super().stop_instance(inst, now_s)
        self._maybe_lose("stop_instance", inst.gpus)

    def set_kv_target(self, inst, free_blocks, now_s):
        super().set_kv_target(inst, free_blocks, now_s)
        self._maybe_lose("set_kv_target", inst.gpus)

    def send(self, request, inst, now_s):
        super().send(request, inst, now_s)
        self._maybe_lose("send", inst.gpus)


def lose_worker(ex: FaultyExecutor, d, gpus, now_s: float, give_up: int = 0) -> None:
    """GPUs lost as the controller handles it: the requests that ran there start over at the front of their
    queues, oldest first (those with tokens out after them), but for every ``give_up``-th, failed (its losses reached
    max_worker_losses_per_request) and ended before the driver hears of the loss."""
    hit = [i for i, inst in d.state.instances.items() if set(inst.gpus) & set(gpus)]
    requeue = []
    for iid in hit:
        for r in ex.running.pop(iid, []):
            if give_up and int(r[1:]) % (give_up + 1) == 0:
                ex.ended.add(r)
                d.request_finished(ex.model_of[r], iid, now_s, route=False, request=r)
            else:
                requeue.append(r)
    items = []
    for r in sorted(requeue, key=lambda r: int(r[1:])):
        items.append((ex.model_of[r], r, ex.prompt[r] + 5 if r in ex.prefilled else None))
        ex.prefilled.discard(r)
    d.lose_gpus(gpus, now_s, items)
    if d.state.live_gpus() == 0:
        for m in d.state.models:  # nothing left to serve them (the controller's NoWorkersError)
            d.fail_waiting(m, WarmServeError("no workers"), now_s)


class FaultFuzz(RuleBasedStateMachine):
    """One cluster, policy and driver per run; the rules are the events a live controller reports."""

    def __init__(self):
        super().__init__()
        self.d = None

    @initialize(variant=st.sampled_from(range(len(VARIANTS))),
                tps=st.lists(st.sampled_from([1, 1, 2]), min_size=3, max_size=5),
                weights=st.lists(st.floats(2.0, 14.0), min_size=5, max_size=5),
                kv=st.lists(st.sampled_from([1 << 16, 1 << 18, 1 << 19]), min_size=5, max_size=5),
                servers=st.lists(st.lists(st.sampled_from(range(len(GPU_SIZES))), min_size=1, max_size=4),
                                 min_size=1, max_size=3),
                hist=st.sampled_from(["none", "all", "some"]), seed=st.integers(0, 6), tick_first=st.booleans(),
                demo=st.integers(0, 3), calm=st.sampled_from([0, 0, 15, 40]))
    def setup(self, variant, tps, weights, kv, servers, hist, seed, tick_first, demo, calm):
        """``demo`` > 0: the demo server's small models (``DEMO``), over-subscribed on ``demo`` + 1 GPUs of 1 GiB.
        ``calm``: steps before the first fault (load builds up, instances start, stop and move first)."""
        self.calm = calm
        gpus_total = sum(len(s) for s in servers)
        if gpus_total < 2:
            servers = servers + [[1]]
        self.models = [_model(chr(ord("a") + k), tp, weights[k] * tp, kv[k], 4096) for k, tp in enumerate(tps)]
        sizes_of = GPU_SIZES
        if demo:
            self.models = [ModelInfo(n, w, 1, kv, 0.01, 0.005, max_context_tokens=ctx) for n, w, kv, ctx in
                           DEMO[:len(tps)]]
            servers, sizes_of = [[0] * (demo + 1)], [GiB]
        self.sizes_of = sizes_of
        srvs, gpus = [], []
        for s, sizes in enumerate(servers):
            ids = tuple(range(len(gpus), len(gpus) + len(sizes)))
            srvs.append(ServerState(s, ids))
            gpus.extend(GpuState(g, s, sizes_of[z]) for g, z in zip(ids, sizes))
        self.state = ClusterState(srvs, gpus, {m.name: m for m in self.models})
        history = None
        if hist != "none":
            history = _history(self.models, seed)
            if hist == "some":
                history = {k: v for i, (k, v) in enumerate(history.items()) if i % 2 == 0}
        name, opts = VARIANTS[variant]
        self.name = name
        self.pol = make_policy(name, models=self.models, config=PolicyConfig(**opts), history=history)
        self.ex = FaultyExecutor()
        self.d = self.ex.attach(PolicyDriver(self.pol, self.state, self.ex))
        self.now = self.ex.now = T0
        self.n = 0
        self.model_of: dict[str, str] = self.ex.model_of
        self.prompt: dict[str, int] = self.ex.prompt
        self.prefilled: set[str] = self.ex.prefilled
        self.finished: set[str] = set()
        self.ended: set[str] = self.ex.ended  # failed by the test, as an executor fails them
        self.withdrawn: set[str] = set()
        self.new_hosts = 0
        if tick_first or name in STATIC:
            try:
                self.d.tick(self.now)
            except UnplacedModelError:
                # a static layout leaves a model out: the controller refuses to start (its first tick raises)
                assume(name not in STATIC)
                raise

    # ---- helpers ------------------------------------------------------------------------------------------

    def _running(self):
        return [(iid, r) for iid, reqs in self.ex.running.items() for r in reqs]

    def _queued(self):
        return [(m, r) for m, q in self.state.queues.items() for r in q]

    def _finish(self, iid: str, req: str, *, failed: bool = False, route: bool = True) -> None:
        """The executor's end of a request it ran on ``iid`` (taken off its list by the caller)."""
        (self.ended if failed else self.finished).add(req)
        self.d.request_finished(self.model_of[req], iid, self.now, route=route, request=req)

    # ---- load ---------------------------------------------------------------------------------------------

    @rule(k=st.integers(0, 4), count=st.sampled_from([1, 3, 12, 40]), tokens=st.sampled_from([0, 64, 900, 4000]))
    def submit(self, k, count, tokens):
        m = self.models[k % len(self.models)].name
        for _ in range(count):
            self.n += 1
            r = f"r{self.n}"
            self.model_of[r], self.prompt[r] = m, tokens
            self.d.submit(m, r, self.now, prompt_tokens=tokens)

    @precondition(lambda self: self.d is not None and any(self.ex.running.values()))
    @rule(data=st.data(), count=st.integers(1, 6))
    def finish(self, data, count):
        for _ in range(count):
            run = self._running()
            if not run:
                return
            iid, r = run[data.draw(st.integers(0, len(run) - 1))]
            self.ex.running[iid].remove(r)
            if r not in self.prefilled:
                self.prefilled.add(r)
                self.d.prefill_done(r, self.now)
            self._finish(iid, r)

    @precondition(lambda self: self.d is not None and any(self.ex.running.values()))
    @rule(data=st.data())
    def prefill(self, data):
        run = [(i, r) for i, r in self._running() if r not in self.prefilled]
        if run:
            _, r = run[data.draw(st.integers(0, len(run) - 1))]
            self.prefilled.add(r)
            self.d.prefill_done(r, self.now)

    @precondition(lambda self: self.d is not None and any(self.state.queues.values()))
    @rule(data=st.data())
    def withdraw(self, data):
        q = self._queued()
        m, r = q[data.draw(st.integers(0, len(q) - 1))]
        assert self.d.withdraw(m, r, self.now)
        self.withdrawn.add(r)

    @precondition(lambda self: self.d is not None and self.calm <= 0 and any(self.state.queues.values()))
    @rule(k=st.integers(0, 4))
    def fail_waiting(self, k):
        """The waiting requests of a model fail (a shutdown's, or no worker left)."""
        self.d.fail_waiting(self.models[k % len(self.models)].name, WarmServeError("shutting down"), self.now)

    @precondition(lambda self: self.d is not None and any(self.ex.running.values()))
    @rule(data=st.data())
    def refuse(self, data):
        """An engine refused a request for want of room (``NoRoomHereError``): the controller takes it off the
        refuser's books, then the driver sends it on or the controller fails it."""
        run = self._running()
        iid, r = run[data.draw(st.integers(0, len(run) - 1))]
        self.ex.running[iid].remove(r)
        tokens = self.prompt[r] + 3 if r in self.prefilled else None
        if not self.d.reroute(self.model_of[r], r, iid, self.now, prompt_tokens=tokens):
            self._finish(iid, r, failed=True)

    # ---- instances and prewarms ---------------------------------------------------------------------------

    def _mappable(self, inst) -> int:
        """KV blocks an engine maps as it starts: its cap, or what its GPUs' memory holds beside the others (a
        `shared` group whose floors exceed its memory takes turns for what it lacks: ``colocation.floored``)."""
        free = min(self.state.free_bytes_on()[g] for g in inst.gpus) // self.state.models[inst.model].kv_block_bytes
        return max(0, min(inst.kv_blocks_total, inst.kv_blocks_mapped + free))

    def _starting(self):
        return sorted(i for i, inst in self.state.instances.items() if not inst.ready)

    @precondition(lambda self: self.d is not None and any(not i.ready for i in self.state.instances.values()))
    @rule(data=st.data())
    def ready(self, data):
        ids = self._starting()
        iid = ids[data.draw(st.integers(0, len(ids) - 1))]
        inst = self.state.instances[iid]
        assert self.d.instance_ready(iid, self.now, kv_blocks_mapped=self._mappable(inst),
                                     max_seqs=data.draw(st.sampled_from([0, 4, 256])))

    @precondition(lambda self: self.d is not None and self.calm <= 0 and bool(self.state.instances))
    @rule(data=st.data(), lost=st.booleans(), ended_first=st.booleans())
    def fail_instance(self, data, lost, ended_first):
        """A start fails (``instance_failed``), or a serving engine dies: the executor fails what it ran there,
        before or after the report."""
        ids = sorted(self.state.instances)
        iid = ids[data.draw(st.integers(0, len(ids) - 1))]
        reqs = self.ex.running.pop(iid, [])
        err = WorkerLostError("gone") if lost else WarmServeError("boom")
        if ended_first:
            for r in reqs:
                self._finish(iid, r, failed=True, route=False)
        self.d.instance_failed(iid, self.now, err)
        if not ended_first:
            for r in reqs:
                self._finish(iid, r, failed=True, route=False)
        self.d.route_all(self.now)

    @precondition(lambda self: self.d is not None and bool(self.state.prewarms))
    @rule(data=st.data())
    def fail_prewarm(self, data):
        ids = sorted(self.state.prewarms)
        self.d.prewarm_failed(ids[data.draw(st.integers(0, len(ids) - 1))])

    # ---- membership ---------------------------------------------------------------------------------------

    @precondition(lambda self: self.d is not None and self.calm <= 0 and self.state.live_gpus() > 0)
    @rule(data=st.data(), whole=st.booleans(), give_up=st.integers(0, 3))
    def lose(self, data, whole, give_up):
        """A server's GPUs (or one GPU) are lost."""
        live = [s for s in self.state.servers if s.gpu_ids]
        srv = live[data.draw(st.integers(0, len(live) - 1))]
        gpus = list(srv.gpu_ids) if whole else [srv.gpu_ids[data.draw(st.integers(0, len(srv.gpu_ids) - 1))]]
        lose_worker(self.ex, self.d, gpus, self.now, give_up)

    @precondition(lambda self: self.d is not None and self.calm <= 0 and self.ex.armed is None)
    @rule(call=st.sampled_from(["send", "start_instance", "stop_instance", "load_prewarm", "drop_prewarm",
                                "set_kv_target"]), after=st.integers(0, 3))
    def arm(self, call, after):
        """The ``after``-th next ``call`` of the executor loses its worker's GPU."""
        self.ex.armed = (call, after)

    @precondition(lambda self: self.d is not None and self.state.live_gpus() < MAX_LIVE)
    @rule(data=st.data(), sizes=st.lists(st.sampled_from(range(len(GPU_SIZES))), min_size=1, max_size=3),
          new_host=st.booleans())
    def add(self, data, sizes, new_host):
        sizes = sizes[:MAX_LIVE - self.state.live_gpus()]
        if new_host:
            self.new_hosts += 1
            key = f"host{self.new_hosts}"
        else:
            keys = sorted(self.d._server_of, key=str)
            key = keys[data.draw(st.integers(0, len(keys) - 1))]
        self.d.add_gpus(key, [self.sizes_of[z % len(self.sizes_of)] for z in sizes])
        self.d.route_all(self.now)

    # ---- time ---------------------------------------------------------------------------------------------

    @precondition(lambda self: self.d is not None)
    @rule(dt=st.sampled_from([0.5, 1.0, 3.0, 10.0, 30.0, 301.0]))
    def tick(self, dt):
        self.now += dt
        self.ex.now = self.now
        for inst in self.state.instances.values():  # measured KV use: a few blocks a request
            inst.kv_blocks_used = min(inst.kv_blocks_mapped, inst.in_flight * 2)
        self.d.tick(self.now)
        self._check_not_starved()

    @precondition(lambda self: self.d is not None)
    @rule(dt=st.sampled_from([0.5, 2.0, 6.0]), ready=st.booleans(), done=st.sampled_from([0, 1, 2, 4]))
    def serve(self, dt, ready, done):
        """Time passes as it does when nothing fails: starting instances become ready (or stay starting), each
        instance ends its ``done`` oldest requests (draining ones too), then the tick."""
        self.now += dt
        self.ex.now = self.now
        for iid in self._starting() if ready else ():
            inst = self.state.instances.get(iid)
            if inst is not None and not inst.ready:
                self.d.instance_ready(iid, self.now, kv_blocks_mapped=self._mappable(inst))
        for iid, reqs in list(self.ex.running.items()):
            for r in list(reqs[:done]):
                if r not in reqs:
                    continue  # an earlier end's stop or route moved it
                reqs.remove(r)
                if r not in self.prefilled:
                    self.prefilled.add(r)
                    self.d.prefill_done(r, self.now)
                self._finish(iid, r, route=False)
        self.d.route_all(self.now)
        self.tick(0.0)

    def _check_not_starved(self):
        """A queued request of a model is routed where an instance of its model is ready, takes requests and
        runs none: the tick ends routing the queues."""
        for m, q in self.state.queues.items():
            if not q:
                continue
            idle = [i.instance_id for i in self.state.instances.values()
                    if i.model == m and i.ready and not i.draining and i.in_flight == 0]
            assert not idle, f"{len(q)} request(s) of {m} wait beside idle instance(s) {idle}"

    # ---- invariants ---------------------------------------------------------------------------------------

    @invariant()
    def requests_each_in_one_place(self):
        if self.d is None:
            return
        STEPS[0] += 1
        self.calm -= 1
        where = Counter()
        for _, r in self._queued():
            where[r] += 1
        for _, r in self._running():
            where[r] += 1
        failed = {name for op, name in self.ex.log if op == "fail"}
        for r in self.finished | self.ended | self.withdrawn | failed:
            where[r] += 1
        assert not self.finished & self.ended and not (self.finished | self.ended) & self.withdrawn
        assert not failed & (self.finished | self.ended | self.withdrawn)
        wrong = {r: c for r, c in where.items() if c != 1}
        missing = [f"r{k}" for k in range(1, self.n + 1) if f"r{k}" not in where]
        assert not wrong and not missing, (wrong, missing)

    @invariant()
    def in_flight_matches_the_executor(self):
        if self.d is None:
            return
        st_ = self.state
        for iid, reqs in self.ex.running.items():
            assert not reqs or iid in st_.instances, f"requests {reqs} run on {iid}, gone from the state"
        for iid, inst in st_.instances.items():
            n = len(self.ex.running.get(iid, ()))
            assert inst.in_flight == n, (iid, inst.in_flight, n)
            assert not n or inst.ready, f"requests sent to {iid} before it is ready"
            assert not (inst.draining and inst.in_flight <= 0), f"{iid} drains with nothing in flight"

    @invariant()
    def prefill_load_matches_the_requests(self):
        if self.d is None:
            return
        pf = self.d._prefill
        queued = {r for _, r in self._queued()}
        running = {r: iid for iid, r in self._running()}
        for r, (tokens, iid) in pf.items():
            assert r in queued or r in running, f"{r} ended but still counts {tokens} prompt tokens"
            assert iid == running.get(r), (r, iid, running.get(r))
        for m, q in self.state.queues.items():
            assert self.state.queued_prompt_tokens.get(m, 0) == sum(pf[r][0] for r in q if r in pf), m
        for iid, inst in self.state.instances.items():
            want = sum(pf[r][0] for r in self.ex.running.get(iid, ()) if r in pf)
            assert inst.prefill_tokens_pending == want, (iid, inst.prefill_tokens_pending, want)

    @invariant()
    def memory_and_lost_gpus(self):
        if self.d is None:
            return
        st_ = self.state
        free = st_.free_bytes_on()
        assert min(free, default=0) >= 0, [(g, f) for g, f in enumerate(free) if f < 0]
        for inst in st_.instances.values():
            assert len(inst.gpus) == st_.models[inst.model].tp
            assert len({st_.gpus[g].server_id for g in inst.gpus}) == 1
            assert not any(st_.gpus[g].gone for g in inst.gpus), f"{inst.instance_id} on a lost GPU"
        for p in st_.prewarms.values():
            assert not any(st_.gpus[g].gone for g in p.gpus), f"prewarm {p.prewarm_id} on a lost GPU"
        for k in self.d.kept.values():
            assert not any(st_.gpus[g].gone for g in k.gpus), f"kept weights of {k.instance_id} on a lost GPU"
            for g in k.gpus:  # weights a stopped instance left stay resident until dropped
                free[g] -= st_.models[k.model].shard_bytes
        assert min(free, default=0) >= 0, ("with kept weights", [(g, f) for g, f in enumerate(free) if f < 0])

    @invariant()
    def gpus_shared_only_when_co_served(self):
        if self.d is None or self.name == "shared":
            return
        co = self.pol._co.ids if self.pol._co is not None else set()
        owner: dict[int, str] = {}
        for inst in self.state.instances.values():
            for g in inst.gpus:
                other = owner.get(g)
                assert other is None or (inst.instance_id in co and other in co), \
                    f"{other} and {inst.instance_id} share GPU {g}; co-served: {sorted(co)}"
                owner[g] = inst.instance_id


FaultFuzz.TestCase.settings = settings(
    max_examples=EXAMPLES or 150, stateful_step_count=100 if EXAMPLES else 50, deadline=None, derandomize=not EXAMPLES,
    database=None, suppress_health_check=list(HealthCheck))
TestFaultFuzz = FaultFuzz.TestCase
