import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warmserve.policy.gpu_masks import is_laminar
from warmserve.policy.placement import Board
from warmserve.policy.state import ClusterState, ModelInfo

GiB = 1 << 30
MODELS = [ModelInfo(f"t{tp}-{k}", tp * 10 * GiB, tp) for tp in (1, 2, 4, 8) for k in range(3)]


def new_board(n_servers=2, gpu_gib=40, laminar=True):
    st_ = ClusterState.uniform(n_servers, MODELS, gpu_bytes=gpu_gib * GiB)
    return Board(st_, laminar=laminar), st_


def check(board: Board, total: int):
    for s, srv in enumerate(board.by_server):
        masks = [r.mask for r in srv.values()]
        assert is_laminar(masks), masks
        for k in range(8):
            here = [r for r in srv.values() if r.mask >> k & 1]
            assert len({r.model for r in here}) == len(here), "two replicas of one model on a GPU"
            if not board.busy[s, k]:
                assert board.free[s, k] == total - sum(r.shard_bytes for r in here)
                assert board.free[s, k] >= 0


ops = st.lists(
    st.one_of(
        st.tuples(st.just("place"), st.integers(0, len(MODELS) - 1), st.floats(0.01, 10)),
        st.tuples(st.just("evict"), st.integers(0, 1000), st.just(0.0)),
        st.tuples(st.just("up"), st.integers(0, len(MODELS) - 1), st.just(0.0)),
        st.tuples(st.just("down"), st.integers(0, 1000), st.just(0.0)),
    ),
    max_size=60,
)


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_laminar_invariant_holds_after_any_sequence(seq):
    board, _ = new_board()
    total = 40 * GiB
    instances = []
    n = 0
    for op, a, score in seq:
        if op == "place":
            n += 1
            before = {pid: r.score for pid, r in board.reps.items()}
            got = board.place(f"p{n}", MODELS[a].name, score)
            if got is not None:
                gpus, evicted = got
                assert len(gpus) == MODELS[a].tp and len({g // 8 for g in gpus}) == 1
                assert all(before[e] < score for e in evicted), "evicted a replica that outranks the new one"
        elif op == "evict" and board.reps:
            board.remove(sorted(board.reps)[a % len(board.reps)])
        elif op == "up":
            got = board.choose_for_instance(MODELS[a].name)
            if got is not None:
                gpus, used, evicted = got
                assert used is None or used not in board.reps
                assert not any(set(board.gpus_of(r.server, r.mask)) & set(gpus) for r in board.reps.values())
                instances.append(gpus)
        elif op == "down" and instances:
            board.stop_instance(instances.pop(a % len(instances)), total)
        check(board, total)


def test_same_tp_replicas_share_exactly_or_not_at_all():
    board, _ = new_board(1, gpu_gib=80)
    got = [board.place(f"p{i}", f"t2-{i}", 1.0 - i / 10)[0] for i in range(3)]
    for a, b in itertools.combinations(got, 2):
        assert set(a) == set(b) or not set(a) & set(b)


def test_prefers_empty_gpus_then_master_then_least_overlap():
    board, _ = new_board(1, gpu_gib=80)
    first = [board.place(f"p{i}", f"t1-{i}", 5.0 - i)[0] for i in range(3)]
    assert len({g for gs in first for g in gs}) == 3  # spread over empty GPUs before stacking


def test_eviction_makes_room_for_a_higher_score_replica_only():
    board, _ = new_board(1, gpu_gib=25)  # one tp-8 shard (20 GiB) or two 10 GiB shards per GPU
    for i in range(8):
        assert board.place(f"low{i}", "t1-0" if i % 2 else "t1-1", 0.1) is not None
        assert board.place(f"low{i}b", "t1-2", 0.1) is not None
    assert board.place("lower", "t8-0", 0.05) is None  # outranked by everything: skipped
    gpus, evicted = board.place("high", "t8-0", 9.0)
    assert len(gpus) == 8 and evicted
    assert all(e.startswith("low") for e in evicted)
    check(board, 25 * GiB)


def test_round_robin_breaks_the_laminar_rule_where_laminar_does_not():
    seq = [("t2-0", 3.0), ("t1-0", 2.9), ("t2-1", 2.8), ("t4-0", 2.7), ("t2-2", 2.6), ("t1-1", 2.5)]
    rr, _ = new_board(1, gpu_gib=80, laminar=False)
    lam, _ = new_board(1, gpu_gib=80)
    for i, (m, s) in enumerate(seq):
        rr.place(f"p{i}", m, s)
        lam.place(f"p{i}", m, s)
    assert not is_laminar(rr.server_masks()[0])
    assert is_laminar(lam.server_masks()[0])


def test_scale_up_prefers_loaded_prewarm_then_loading_then_least_prewarmed_gpus():
    st_ = ClusterState.uniform(1, MODELS, gpu_bytes=80 * GiB)
    from warmserve.policy.state import PrewarmState
    st_.prewarms["loading"] = PrewarmState("loading", "t1-0", (3,), progress=0.5, score=1.0)
    st_.prewarms["other"] = PrewarmState("other", "t1-1", (0,), progress=1.0, score=1.0)
    b = Board(st_)
    gpus, used, evicted = b.choose_for_instance("t1-0")
    assert (gpus, used, evicted) == ((3,), "loading", [])
    st_.prewarms["done"] = PrewarmState("done", "t1-0", (5,), progress=1.0, score=1.0)
    b = Board(st_)
    assert b.choose_for_instance("t1-0")[1] == "done"
    b = Board(st_)
    gpus, used, evicted = b.choose_for_instance("t2-0")  # cold: two GPUs with no prewarm
    assert used is None and evicted == [] and not set(gpus) & {0, 3, 5}
