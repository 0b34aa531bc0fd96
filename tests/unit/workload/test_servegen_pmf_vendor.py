"""Found in review: the vendored ServeGen length PMFs kept only lengths of probability >= 1e-6, which lost the
long tails' mass and left the means 0.5-10% low against the full PMFs (deepseek-r1 input 10%, m-large input
4%). The small entries are now merged into log-grid buckets at their probability-weighted mean length."""

import csv
import gzip
import math
import os

import numpy as np
import pytest

from warmserve.workload import servegen as sg
from warmserve.workload.data import data_path

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
RAW_PMF = os.path.join(REPO, "..", "shared", "traces", "servegen", "servegen_length_pmf.csv.gz")


def _moments(pairs):
    mass = sum(p for _, p in pairs)
    return mass, sum(v * p for v, p in pairs) / mass


def test_compact_pmf_keeps_mass_and_mean_of_a_synthetic_long_tail():
    from warmserve.workload.vendor import compact_pmf

    head = [(v, 0.09) for v in range(1, 11)]  # 0.9 of the mass, kept as it is
    # 0.1 of the mass over 4900 lengths, each below the threshold: the tail that used to be dropped
    tail = [(v, 0.1 / 4900) for v in range(100, 5000)]
    entries = head + tail
    out = compact_pmf(entries, min_prob=1e-3, per_octave=4)
    values = [v for v, _ in out]
    assert values == sorted(set(values))  # one row per length, sorted
    for v, p in head:
        assert dict(out)[v] == p
    mass, mean = _moments(out)
    mass0, mean0 = _moments(entries)
    assert mass == pytest.approx(mass0, rel=1e-12)
    # each bucket sits at its entries' weighted mean, rounded to a whole token
    assert abs(mean - mean0) <= 0.5 * 0.1 + 1e-9
    assert mean == pytest.approx(mean0, rel=1e-4)
    # a log grid of 4 per doubling over 100..5000: about 23 buckets, not 4900 rows
    n_tail = len(out) - len(head)
    assert 20 <= n_tail <= 4 * math.ceil(math.log2(5000 / 100)) + 1
    # every bucket's length lies in the range of lengths it merged, and the buckets cover the tail's span
    tail_out = [v for v, _ in out if v >= 100]
    assert len(tail_out) == n_tail and min(tail_out) >= 100 and max(tail_out) < 5000
    # dropping instead of bucketing (the old rule) loses the tail's mass and pulls the mean far down
    kept = [(v, p) for v, p in entries if p >= 1e-3]
    assert _moments(kept)[1] < 0.2 * mean0


def test_compact_pmf_merges_a_bucket_landing_on_a_kept_length_and_keeps_zero_apart():
    from warmserve.workload.vendor import compact_pmf

    # 64 and 66 are small and share a bucket (8 per doubling: 64..69) whose mean, 65, is a kept length
    entries = [(0, 1e-9), (1, 1e-9), (64, 1e-9), (65, 0.5), (66, 1e-9), (200, 0.5)]
    out = dict(compact_pmf(entries, min_prob=1e-6, per_octave=8))
    assert sorted(out) == [0, 1, 65, 200]
    assert out[65] == pytest.approx(0.5 + 2e-9, rel=1e-15)
    assert out[0] == 1e-9 and out[1] == 1e-9  # length 0 is its own bucket, not merged into 1


def _raw_pmfs(path):
    out = {}
    with gzip.open(path, "rt", newline="") as f:
        for r in csv.DictReader(f):
            if r["field"] in ("input_tokens", "output_tokens"):
                out.setdefault((r["model"], r["field"]), []).append((int(r["value"]), float(r["prob"])))
    return out


def _file_mass(path):
    mass = {}
    with gzip.open(path, "rt", newline="") as f:
        for r in csv.DictReader(f):
            k = (r["model"], r["field"])
            mass[k] = mass.get(k, 0.0) + float(r["prob"])
    return mass


def test_vendored_pmf_means_and_mass_match_the_full_pmfs():
    if not os.path.exists(RAW_PMF):
        pytest.skip(f"the full ServeGen PMF {RAW_PMF} is not here (see the project's shared traces SOURCES.md)")
    raw = _raw_pmfs(RAW_PMF)
    vendored = sg.load_length_pmfs()
    mass = _file_mass(data_path("servegen_length_pmf_io.csv.gz"))
    assert set(vendored) == set(raw) and len(raw) == 9
    bad = []
    for k, pmf in sorted(vendored.items()):
        raw_mass, raw_mean = _moments(raw[k])
        # the loader normalises: the PMF it returns sums to 1 whatever the file's mass
        assert float(pmf.probs.sum()) == pytest.approx(1.0, abs=1e-12)
        assert pmf.mean() == pytest.approx(float(np.dot(pmf.values, pmf.probs)))
        if abs(pmf.mean() / raw_mean - 1) > 0.005 or abs(mass[k] / raw_mass - 1) > 0.005:
            bad.append(f"{k}: mean {pmf.mean():.2f} vs {raw_mean:.2f}, mass {mass[k]:.6f} vs {raw_mass:.6f}")
    assert not bad, "vendored PMFs off the full ones by over 0.5%:\n" + "\n".join(bad)
