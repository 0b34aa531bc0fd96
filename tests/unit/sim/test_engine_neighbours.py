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

    def __init__(self, prompt, output, blocks, gpu_total, gpu_used, on_complete=None):
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
                                on_refused=lambda inst, rid, t: self.refused.setdefault(rid, t))

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


def test_a_queued_request_a_new_neighbour_leaves_no_room_for_is_refused_and_the_next_one_runs():
    """A 100 MiB GPU: a's 40 MiB shard leaves it 60 blocks of 1 MiB. Request 1 (50 blocks) is admitted behind
    request 0 (30 blocks) and waits for its blocks; then b starts there with a 30 MiB shard, and beside both
    shards at most 30 blocks are ever free. At a's next schedule request 1 is refused (``on_refused``), as the
    live engine ends it with a PromptTooLongError, and request 2 behind it runs; before, request 1 waited at the
    head of a's queue for good, and request 2 behind it."""
    gpu_used = [40 * MIB]
    cl = _Cluster([100] * 3, [50, 50, 10], [30, 50, 5], [100 * MIB], gpu_used)
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
