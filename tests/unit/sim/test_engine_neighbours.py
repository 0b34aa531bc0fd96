"""The engine model's time-sharing when an instance leaves its GPU, and held requests on a decoding engine, driven
through ``BatchEngines`` with an event heap as the simulator drives it (found in a review of the simulator)."""

import heapq

import pytest

from warmserve.policy.state import InstanceState
from warmserve.sim.costmodel import CostModel
from warmserve.sim.engine_model import DECODE, IDLE, BatchEngines

MIB = 1 << 20


class _Cluster:
    """``BatchEngines`` over GPU 0 with its event heap; requests' first tokens and ends by time."""

    def __init__(self, prompt, output, blocks, gpu_total, gpu_used, on_complete=None, chunked=0):
        self.cost = CostModel()
        self.c7 = self.cost.models["llama2-7b"]
        self.heap, self.seq = [], 0
        self.first, self.done = {}, {}
        self.on_complete = on_complete

        def push(t, inst):
            self.seq += 1
            heapq.heappush(self.heap, (t, self.seq, inst, inst.version))

        def complete(inst, rid, t):
            self.done[rid] = t
            if self.on_complete is not None:
                self.on_complete(inst, rid, t)

        self.refused = {}
        self.eng = BatchEngines(self.cost, 256, prompt, output, blocks, gpu_total, gpu_used, push,
                                lambda rid, t: self.first.setdefault(rid, t), complete,
                                on_refused=lambda inst, rid, t: self.refused.setdefault(rid, t),
                                chunked_prefill_tokens=chunked)

    def start(self, name, kv_blocks_total, shard=0, block_bytes=MIB):
        st = InstanceState(name, "m", (0,), created_s=0.0, kv_blocks_total=kv_blocks_total)
        inst = self.eng.add(st, 0, self.c7, shard, block_bytes, 0.0)
        self.eng.ready(inst, 0.0)
        return inst

    def run_until(self, t_end):
        while self.heap and self.heap[0][0] <= t_end:
            t, _, inst, ver = heapq.heappop(self.heap)
            if ver == inst.version and inst.st.instance_id in self.eng.insts:
                self.eng.event(inst, t)

    def decode_s(self, prompt, output):
        """A lone request's decode at full speed: step k reads prompt + 1 + k tokens."""
        return sum(self.cost.decode_step_s(self.c7, 1, prompt + 1 + k) for k in range(output - 1))


def test_a_busy_neighbour_gets_the_whole_gpu_back_when_an_instance_is_removed():
    """Two instances decode on GPU 0, each at half speed; one is migrated off (its requests taken, then removed).
    Before the fix the survivor kept half speed until it next idled: its 1000 tokens took ~30 s, not ~15.6 s."""
    prompt, output = 100, 1000
    cl = _Cluster([prompt] * 2, [output] * 2, [5] * 2, [72 * 10**9], [0])
    a, b = cl.start("a", 1000), cl.start("b", 1000)
    cl.eng.admit(a, 0, 0.0)
    cl.eng.admit(b, 1, 0.0)
    t_rm = 1.0
    cl.run_until(t_rm)
    assert a.phase == DECODE and a.slow == 2 and b.slow == 2
    cl.eng.drop_requests(b, t_rm)
    cl.eng.remove(b, t_rm)
    assert a.slow == 1
    cl.run_until(1e9)
    # decode work done by t_rm at half speed, the rest at full speed (the model integrates progress exactly)
    expected = t_rm + cl.decode_s(prompt, output) - (t_rm - cl.first[0]) / 2
    assert cl.done[0] == pytest.approx(expected, rel=1e-9)


def test_an_instance_stopped_after_its_last_request_frees_the_gpu_for_its_neighbour():
    """The stop after a drain: the instance is removed inside its own last completion (the simulator's driver
    stops a drained instance from ``request_finished``), still decoding. Its neighbour speeds up from then on."""
    prompt = 100
    outs = [1000, 200]
    removed = {}
    cl = _Cluster([prompt] * 2, outs, [5] * 2, [72 * 10**9], [0])

    def stop_drained(inst, rid, t):
        if inst.st.instance_id == "b":
            cl.eng.remove(inst, t)
            removed["t"] = t

    cl.on_complete = stop_drained
    a, b = cl.start("a", 1000), cl.start("b", 1000)
    cl.eng.admit(a, 0, 0.0)
    cl.eng.admit(b, 1, 0.0)
    cl.run_until(1e9)
    t_rm = removed["t"]
    assert a.slow == 1
    # both decoded at half speed from a's first token until b's end (b's prefill ran while a's was done)
    expected = t_rm + cl.decode_s(prompt, outs[0]) - (t_rm - cl.first[0]) / 2
    assert cl.done[0] == pytest.approx(expected, rel=1e-9)


def test_a_decoding_engine_admits_a_held_request_once_memory_frees():
    """GPU 0 has room for one request's KV (5 blocks); a prewarm holds the rest. The second request is held while
    the first decodes for ~15 s; the prewarm leaves at 2 s and ``retry_held`` runs (the simulator's settle).
    Before the fix only idle engines were woken, so the held request waited for the first one's end."""
    prompt, output = 100, 1000
    total, prewarm = 10 * MIB, 5 * MIB
    used = [prewarm]
    cl = _Cluster([prompt] * 2, [output] * 2, [5] * 2, [total], used)
    a = cl.start("a", 10)
    assert a.st.kv_blocks_mapped == 5
    cl.eng.admit(a, 0, 0.0)
    cl.eng.admit(a, 1, 1.0)
    cl.run_until(2.0)
    assert 1 not in cl.first and list(a.waiting) == [1] and a.phase == DECODE
    used[0] -= prewarm  # the prewarm is evicted
    cl.eng.retry_held(2.0)
    cl.run_until(1e9)
    # admitted at the end of the step under way, then prefilled: well under a second, not at request 0's end
    assert 2.0 < cl.first[1] < 2.2 < cl.done[0]


@pytest.mark.parametrize("chunked", [0, 2048])
def test_a_queued_request_a_new_neighbour_leaves_no_room_for_is_refused_and_the_next_one_runs(chunked):
    """A 100 MiB GPU: a's 40 MiB shard leaves it 60 blocks of 1 MiB. Request 1 (50 blocks) is admitted behind
    request 0 (30 blocks) and waits for its blocks; then b starts there with a 30 MiB shard, and beside both
    shards at most 30 blocks are ever free. At a's next schedule request 1 is refused (``on_refused``), as the
    live engine ends it with a PromptTooLongError, and request 2 behind it runs; before, request 1 waited at the
    head of a's queue for good, and request 2 behind it. Chunked prefill's step scheduling (``chunked``) refuses on
    its own path, which must go on to request 2 as well."""
    gpu_used = [40 * MIB]
    cl = _Cluster([100] * 3, [50, 50, 10], [30, 50, 5], [100 * MIB], gpu_used, chunked=chunked)
    a = cl.start("a", 60, shard=40 * MIB)
    assert cl.eng.max_blocks(a) == 60
    cl.eng.admit(a, 0, 0.0)
    assert cl.eng.admit(a, 1, 0.0)
    cl.run_until(0.5)
    assert 0 in cl.first and 1 not in cl.first
    gpu_used[0] += 30 * MIB  # b's shard, as the simulator charges it when b starts
    cl.start("b", 10, shard=30 * MIB)
    assert cl.eng.max_blocks(a) == 30
    assert cl.eng.admit(a, 2, 0.6)
    cl.run_until(1e9)
    assert list(cl.refused) == [1] and 0.6 <= cl.refused[1] < cl.done[0]  # at a's next schedule after b came
    assert 2 in cl.done and 1 not in cl.first and not a.waiting and a not in cl.eng.stalled


def test_a_refusal_that_stops_a_draining_instance_while_held_requests_are_retried():
    """a waits idle with its one request held for memory a prewarm takes (40 MiB); then b starts beside it, and
    the request can never fit. Retried (``retry_held``, after prewarms were evicted), it is refused, and the driver
    stops a, draining, whose last request that was (``on_refused`` here removes it as the simulator's driver does).
    Found in review: the retry loop iterated over the engines it had just removed one from (RuntimeError)."""
    gpu_used = [40 * MIB + 40 * MIB]  # a's shard and the prewarm
    cl = _Cluster([100] * 3, [50] * 3, [50, 5, 5], [100 * MIB], gpu_used)
    a = cl.start("a", 60, shard=40 * MIB)
    assert cl.eng.admit(a, 0, 0.0)
    cl.run_until(0.5)
    assert a.phase == IDLE and list(a.waiting) == [0] and a in cl.eng.stalled
    gpu_used[0] += 30 * MIB
    cl.start("b", 10, shard=30 * MIB)
    cl.eng.on_refused = lambda inst, rid, t: (cl.refused.setdefault(rid, t), cl.eng.remove(inst, t))
    cl.eng.retry_held(0.6)
    assert cl.refused == {0: 0.6} and "a" not in cl.eng.insts and a.st.kv_blocks_mapped == 0


def test_an_admission_its_own_mapping_covers_takes_nothing_back_from_its_neighbours():
    """a maps on demand (free target 0) beside b, which keeps all its 30 blocks of 1 MiB mapped ahead; a's request
    needs 5 blocks and the GPU has room for exactly those 5 more, so a maps them and runs. Only an engine that
    still lacks blocks once it has mapped what it can is stalled and takes its neighbours' headroom back; a has
    none to lack, so b keeps its 30 blocks mapped."""
    cl = _Cluster([100], [10], [5], [35 * MIB], [0])
    b = cl.start("b", 30)
    assert b.st.kv_blocks_mapped == 30
    st = InstanceState("a", "m", (0,), created_s=0.0, kv_blocks_total=30, kv_free_target=0)
    a = cl.eng.add(st, 0, cl.c7, 0, MIB, 0.0)
    cl.eng.ready(a, 0.0)
    assert st.kv_blocks_mapped == 0
    assert cl.eng.admit(a, 0, 0.0)
    cl.run_until(0.0)  # a schedules: the prefill that admits the request
    assert a.running or a.pf_batch
    assert st.kv_blocks_mapped == 5 and b.st.kv_blocks_mapped == 30 and not cl.eng.stalled
    cl.run_until(1e9)
    assert 0 in cl.done and b.st.kv_blocks_mapped == 30


def test_the_end_of_a_fresh_engines_start_is_no_iteration():
    """``event`` answers False where a fresh engine's start ended (``on_started`` follows), so the driver does not
    route queued requests as after an iteration: the instance turns ready only when the driver says so."""
    cl = _Cluster([100], [10], [5], [100 * MIB], [0])
    started = []
    cl.eng.on_started = lambda inst, t: started.append(t)
    st = InstanceState("a", "m", (0,), created_s=0.0, kv_blocks_total=10)
    a = cl.eng.add(st, 0, cl.c7, 0, MIB, 0.0)
    cl.eng.start_engine(a, 2.0, 0.0)
    t, _, inst, _ = heapq.heappop(cl.heap)
    assert inst is a and t == pytest.approx(2.0)  # a lone process on a GPU: its work at full speed
    assert cl.eng.event(a, t) is False
    assert started == [t] and a.phase == IDLE and not a.ready


def test_dropped_requests_count_the_tokens_they_had_out():
    """A lost or migrated instance's requests resume elsewhere after the tokens they had out: none while waiting or
    in prefill; a decoding one its first token and one per whole decode step (the step under way is lost)."""
    cl = _Cluster([100] * 3, [10] * 3, [1] * 3, [100 * MIB], [0])
    a = cl.start("a", 10)
    assert cl.eng.admit(a, 0, 0.0)
    assert cl.eng.drop_requests(a, 0.0) == [(0, 0)]  # queued, its schedule not yet run
    assert cl.eng.admit(a, 1, 0.0)
    cl.run_until(0.0)
    assert list(a.pf_batch) == [1] and cl.eng.drop_requests(a, 0.0) == [(1, 0)]
    cl = _Cluster([100] * 3, [10] * 3, [1] * 3, [100 * MIB], [0])  # a fresh instance: a stopped one runs no more
    a = cl.start("a", 10)
    assert cl.eng.admit(a, 2, 1.0)
    cl.run_until(1.0)  # the prefill starts
    t = cl.heap[0][0]
    cl.run_until(t)  # and ends: first token out, decoding
    # 3.5 steps on: step k reads 100 + 1 + k tokens (``decode_s``); 1 + 3 tokens out, the fourth step lost
    steps = [cl.cost.decode_step_s(cl.c7, 1, 101 + k) for k in range(4)]
    assert cl.eng.drop_requests(a, t + sum(steps[:3]) + steps[3] / 2) == [(2, 4)]
