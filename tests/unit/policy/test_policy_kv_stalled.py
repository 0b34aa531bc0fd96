"""An engine stalled for room reports the blocks its next step wants (``KvStats.kv_blocks_wanted``), and the KV
target covers them, evicting a prewarm beside it for their pages. Found in review: a 2,000-token prompt (8 blocks)
on an instance with 1 request in flight (target ceil(62 x 1 / 32) = 2 free blocks) beside another model's prewarm
waited out request_timeout_s: nothing asked for the prewarm's pages."""

import math

from test_policy_scaling import add, setup

from warmserve.policy import actions as A
from warmserve.policy.instant import instant_driver
from warmserve.policy.state import PrewarmState


def _stalled_beside_a_prewarm(wanted: int):
    pol, st = setup(kv_reservation=True)
    add(st, "i1", "a", 0, in_flight=1, total=400, used=0, mapped=400)
    driver = instant_driver(pol, st)
    for a in pol.tick(st, 10.0):  # the idle target: most of the cache unmapped
        driver.apply(a, 10.0)
    assert st.instances["i1"].kv_blocks_mapped == math.ceil(400 / 32)
    st.prewarms["p"] = PrewarmState("p", "b", (0,), 1.0, score=0.1)
    st.prewarms["q"] = PrewarmState("q", "c", (0,), 1.0, score=0.9)
    block = st.models["a"].kv_block_bytes
    free_blocks = st.free_bytes_on()[0] // block
    assert free_blocks < wanted, "the prewarm must hold pages the step wants"
    driver.set_kv("i1", wanted=wanted)
    return pol, st, driver


def test_a_stalled_step_gets_the_blocks_it_wants_evicting_the_prewarm_beside_it():
    pol, st, driver = _stalled_beside_a_prewarm(wanted=300)
    acts = pol.tick(st, 20.0)
    assert [a for a in acts if isinstance(a, A.Evict)] == [A.Evict("p", "kv")]
    assert A.SetKvTarget("i1", 300) in acts
    for a in acts:
        driver.apply(a, 20.0)
    assert st.instances["i1"].kv_blocks_mapped >= 300 and "p" not in st.prewarms and "q" in st.prewarms


def test_no_stall_keeps_the_load_target_and_the_prewarm():
    pol, st, driver = _stalled_beside_a_prewarm(wanted=300)
    driver.set_kv("i1", wanted=0)
    acts = pol.tick(st, 20.0)
    assert not [a for a in acts if isinstance(a, A.Evict)], acts
    assert "p" in st.prewarms
