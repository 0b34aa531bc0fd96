"""Placement's choices (``placement.Board``) pinned on small hand-built boards, against hand-computed answers: the
master group before a less overlapped one, the cheapest eviction and no more than it needs, the failed-search
memo, the prewarm an instance takes, co-served GPUs staying busy, and ``place_at``'s laminar refusal."""

from warmserve.policy.placement import Board
from warmserve.policy.state import ClusterState, InstanceState, ModelInfo, PrewarmState

GiB = 1 << 30
MODELS = [ModelInfo(name, 10 * GiB, 1) for name in "abcde"] + [ModelInfo("p", 20 * GiB, 2), ModelInfo("q", 20 * GiB, 2)]


def _state(n_gpus=2, gpu_gib=80):
    """One server of ``n_gpus`` GPUs of ``gpu_gib`` GiB; five tp-1 models of 10 GiB shards (a-e) and two tp-2 ones
    (p, q; 10 GiB shards); nothing placed."""
    return ClusterState.uniform(1, MODELS, gpus_per_server=n_gpus, gpu_bytes=gpu_gib * GiB)


def _prewarm(st, pid, model, gpus, score, progress=1.0):
    st.prewarms[pid] = PrewarmState(pid, model, gpus, progress, score)


def test_master_group_beats_a_less_overlapped_one():
    """GPU 0 holds a and b at score 4 (overlap 8, top score 4), GPU 1 holds c at 6 (overlap 6, top score 6): a
    replica of d at 5 outranks everything on GPU 0 only, so it goes there despite the larger overlap."""
    b = Board(_state())
    assert b.place("a", "a", 4.0) == ((0,), [])
    assert b.place("c", "c", 6.0) == ((1,), [])
    assert b.place("b", "b", 4.0) == ((0,), [])  # 4 is not below GPU 0's top score 4: still a master group there
    assert b.maxscore[0, :2].tolist() == [4.0, 6.0]
    assert b.place("d", "d", 5.0) == ((0,), [])
    assert b.maxscore[0, :2].tolist() == [5.0, 6.0]


def test_eviction_takes_only_the_lowest_replica_that_makes_room():
    """A 25 GiB GPU with a (score 1) and b (score 2), 5 GiB free: a replica of c at 5 needs 5 GiB more, which
    evicting a alone frees; b stays."""
    b = Board(_state(n_gpus=1, gpu_gib=25))
    b.place("a", "a", 1.0)
    b.place("b", "b", 2.0)
    assert b.place("c", "c", 5.0) == ((0,), ["a"])
    assert sorted(b.reps) == ["b", "c"]
    assert int(b.free[0, 0]) == 5 * GiB


def test_eviction_goes_where_the_evicted_score_is_least():
    """Two full 25 GiB GPUs: GPU 0 holds a (1) and b (2), GPU 1 holds c (3) and d (4). A replica of e at 9 evicts
    the cheapest, a on GPU 0 (cost 1), not c on GPU 1 (cost 3)."""
    st = _state(gpu_gib=25)
    for pid, gpu, score in (("a", 0, 1.0), ("b", 0, 2.0), ("c", 1, 3.0), ("d", 1, 4.0)):
        _prewarm(st, pid, pid, (gpu,), score)
    b = Board(st)
    assert b.place("e", "e", 9.0) == ((0,), ["a"])


def test_a_failed_eviction_search_does_not_block_a_higher_score():
    """On a full 25 GiB GPU (a at 0.3, b at 0.4) a replica of c at 0.1 finds nothing to evict, and the board
    remembers it; a later one at 0.5 outranks a and evicts it (the memo skips only scores up to the failed one)."""
    b = Board(_state(n_gpus=1, gpu_gib=25))
    b.place("a", "a", 0.3)
    b.place("b", "b", 0.4)
    assert b.place("c1", "c", 0.1) is None
    assert b.place("c2", "c", 0.5) == ((0,), ["a"])


def test_a_start_takes_the_prewarm_whose_gpus_lose_least():
    """Two loaded replicas of a: on GPU 0 (score 5) alone, and on GPU 1 (score 1) beside b (score 9). The instance
    takes the one on GPU 0, where starting evicts nothing, though its own score is higher."""
    st = _state()
    _prewarm(st, "a0", "a", (0,), 5.0)
    _prewarm(st, "a1", "a", (1,), 1.0)
    _prewarm(st, "b1", "b", (1,), 9.0)
    b = Board(st)
    assert b.choose_for_instance("a") == ((0,), "a0", [])
    assert sorted(b.reps) == ["a1", "b1"]


def test_a_gpu_stays_busy_while_another_instance_serves_on_it():
    """GPU 0 carries two co-served instances: one stopping leaves the GPU busy with one instance and its free
    bytes untouched; the second stopping makes it idle with its whole pool free."""
    st = _state()
    for iid, model in (("i1", "a"), ("i2", "b")):
        st.instances[iid] = InstanceState(iid, model, (0,), created_s=0.0, ready_s=0.0)
    b = Board(st)
    free = int(b.free[0, 0])
    assert free == 60 * GiB and bool(b.busy[0, 0]) and int(b.inst_count[0, 0]) == 2
    b.stop_instance((0,))
    assert bool(b.busy[0, 0]) and int(b.inst_count[0, 0]) == 1 and int(b.free[0, 0]) == free
    b.stop_instance((0,))
    assert not b.busy[0, 0] and int(b.inst_count[0, 0]) == 0 and int(b.free[0, 0]) == 80 * GiB


def test_place_at_refuses_a_group_that_breaks_the_laminar_rule():
    """A tp-2 replica of p on GPUs 1-2: keeping q's weights on GPUs 0-1 would overlap it partly, so ``place_at``
    refuses and adds nothing; on GPUs 1-2 (nested) it is allowed."""
    b = Board(_state(n_gpus=4))
    assert b.place_at("p", "p", (1, 2), 1.0)
    assert not b.place_at("q01", "q", (0, 1), 1.0)
    assert sorted(b.reps) == ["p"]
    assert b.place_at("q12", "q", (1, 2), 1.0)
    assert sorted(b.reps) == ["p", "q12"]


def test_a_stopped_instances_gpu_keeps_the_room_its_prewarms_hold():
    """GPU 0 carries an instance of a (10 GiB shard, no KV mapped) and a prewarm of b (10 GiB) beside it: 60 GiB
    free of 80. Once the instance stops the GPU is idle with 70 GiB free, the prewarm's shard still counted."""
    st = _state()
    st.instances["i1"] = InstanceState("i1", "a", (0,), created_s=0.0, ready_s=0.0)
    _prewarm(st, "b0", "b", (0,), 1.0)
    b = Board(st)
    assert int(b.free[0, 0]) == 60 * GiB
    b.stop_instance((0,))
    assert not b.busy[0, 0] and int(b.free[0, 0]) == 70 * GiB


def test_a_cold_tp2_start_takes_an_aligned_pair():
    """A fresh 8-GPU server: a tp-2 instance takes the aligned pair (0, 1). With an instance of a on GPU 0, the next
    takes (2, 3), the aligned pair that leaves the fewest idle GPUs in the 4-GPU blocks it touches (GPU 1), not an
    unaligned pair such as (1, 2)."""
    assert Board(_state(n_gpus=8)).choose_for_instance("p") == ((0, 1), None, [])
    b = Board(_state(n_gpus=8))
    assert b.choose_for_instance("a") == ((0,), None, [])
    assert b.choose_for_instance("p") == ((2, 3), None, [])
