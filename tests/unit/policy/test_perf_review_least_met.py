"""``arbitration.least_met_first`` (the heap that replaced ``Policy._allocate``'s min() rescan before each start)
against that rescan, on random demands, starved times and GPUs that run out: the same starts in the same order,
the same models left short, ``have`` counted the same."""

import math
import random

import pytest

from warmserve.policy.arbitration import least_met_first


def _rescan(have, want, starved_since, start, out):
    """The loop as it was in ``Policy._allocate``: min() over the short models before each start."""
    short = {m for m in want if want[m] > have[m]}
    wanted = set()
    while short:
        m = min(short, key=lambda m: (have[m] / want[m], starved_since.get(m, math.inf), -want[m], m))
        act = start(m)
        if act is None:
            short.discard(m)
            wanted.add(m)
            continue
        out.append(act)
        have[m] += 1
        if have[m] >= want[m]:
            short.discard(m)
    return wanted


def _starter(rng_seed, gpus):
    """Starts that take 1-2 of ``gpus`` GPUs per model (a fixed size per model) until too few are left."""
    rng = random.Random(rng_seed)
    size, left = {}, [gpus]

    def start(m):
        need = size.setdefault(m, rng.choice((1, 1, 2)))
        if need > left[0]:
            return None
        left[0] -= need
        return (m, left[0])
    return start


@pytest.mark.parametrize("seed", range(40))
def test_same_starts_in_the_same_order_as_the_rescan(seed):
    rng = random.Random(seed)
    names = [f"m{i:03d}" for i in range(rng.randint(1, 60))]
    # integral wants (the policy's) and fractional ones; ties in have / want, so later keys decide
    want = {m: rng.choice((0, 1, 2, 3, 4, 6, 2.5, 0.7)) for m in names}
    have = {m: rng.randint(0 if want[m] == 0 else -1, 3) for m in names}  # a reclaim's victims counted: -1 too
    starved = {m: float(rng.choice((0, 5, 5, 10))) for m in names if rng.random() < 0.4}
    gpus = rng.randint(0, 40)
    h1, h2, o1, o2 = dict(have), dict(have), [], []
    left1 = _rescan(h1, want, starved, _starter(seed, gpus), o1)
    left2 = least_met_first(h2, want, starved, _starter(seed, gpus), o2)
    assert o2 == o1 and left2 == left1 and h2 == h1


def test_ties_in_share_go_to_the_longest_starved_then_the_most_wanted_then_the_name():
    """A fixed order the random cases above are checked against the rescan for."""
    have = {"a": 0, "b": 0, "c": 0}
    want = {"a": 1, "b": 2, "c": 2}
    out = []
    left = least_met_first(have, want, {"c": 3.0}, lambda m: m, out)
    assert out == ["c", "b", "a", "c", "b"] and left == set()
