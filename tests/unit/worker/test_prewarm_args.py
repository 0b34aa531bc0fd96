"""Prewarm arguments out of range get a typed error and load nothing."""

from __future__ import annotations

import pytest

from warmserve import errors
from warmserve.worker import InProcessWorker


def test_a_negative_max_num_seqs_is_refused_before_anything_loads(tiny_models):
    with InProcessWorker("cpu", memory_gib=0.1) as w:
        with pytest.raises(errors.InvalidArgumentError, match="max_num_seqs must be >= 0") as ei:
            w.prewarm(tiny_models["tiny-llama"], max_num_seqs=-5)
        assert ei.value.max_num_seqs == -5
        st = w.stats()
        assert st.models == [] and st.pool.free_bytes == st.pool.total_bytes
