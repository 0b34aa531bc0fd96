"""`warmserve bench switch --parts move --page-mib ...` on the host backend: the per-GiB figures at the pool's 2 MiB
pages and again at each larger page size (the GPU run reads the driver's cost per call off these), and a bad page
size refused before any pool is made."""

from __future__ import annotations

import argparse

import pytest

from warmserve.bench import switch
from warmserve.errors import InvalidArgumentError


def _args(**kw) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    switch.add_arguments(p)
    a = p.parse_args([])
    a.__dict__.update(repeats=1, **kw)
    return a


def test_move_part_measures_each_page_size_beside_the_pools_own():
    a = _args(page_mib="8")
    res = switch.move_and_primitives(a, switch.Device("host", 0))
    assert set(res["by_page_bytes"]) == {str(2 << 20), str(8 << 20)}
    assert res["by_page_bytes"][str(2 << 20)] is res["per_gib"]  # the 2 MiB run is the headline's, not a rerun
    for per_gib in res["by_page_bytes"].values():
        assert per_gib["map_ms"] > 0 and per_gib["unmap_ms"] > 0 and per_gib["move_ms"] > 0
    assert res["move_vs_memcpy"]["bytes"] == 1 << 30


def test_default_is_the_pools_page_size_alone():
    res = switch.move_and_primitives(_args(), switch.Device("host", 0))
    assert "by_page_bytes" not in res and res["per_gib"]["move_ms"] > 0


@pytest.mark.parametrize("bad", ["0", "3", "-2"])
def test_page_sizes_that_are_not_whole_2_mib_multiples_are_refused(bad):
    with pytest.raises(InvalidArgumentError, match="--page-mib"):
        switch.move_and_primitives(_args(page_mib=bad), switch.Device("host", 0))


def test_kv_part_gives_back_through_the_engines_kv_cache_with_one_unmap_per_page():
    """The 1b's 8 MiB blocks: one pool op per block at 2 and 8 MiB pages, one per page (four blocks) at 32 MiB; the
    7b's 32 MiB blocks: one per block at every size."""
    res = switch.kv_give_back(_args(page_mib="8,32"), switch.Device("host", 0), switch.timed, switch.med_ms)
    assert res["1b"]["block_bytes"] == 8 << 20 and res["7b"]["block_bytes"] == 32 << 20
    unmaps = {size: {int(p) >> 20: x["unmap_ops"] for p, x in r["by_page_bytes"].items()} for size, r in res.items()}
    assert unmaps == {"1b": {2: 128, 8: 128, 32: 32}, "7b": {2: 32, 8: 32, 32: 32}}
    for r in res.values():
        for x in r["by_page_bytes"].values():
            assert x["map_ops"] == x["unmap_ops"] and x["grow_ms"] > 0 and x["give_back_ms"] > 0
