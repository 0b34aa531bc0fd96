"""Paths the host cache cannot use are refused typed, as ``Slot.load`` refuses them: a path with a NUL byte (which
os.stat refuses with a bare ValueError) by ``load``, ``contains`` and ``entry_path``; a checkpoint that does not
exist is not cached (``contains`` False), and ``entry_path`` of one is refused naming it. Found in review: bare
ValueError and FileNotFoundError escaped."""

from __future__ import annotations

import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.memory import PagePool
from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache

PAGE = 4096


@pytest.fixture
def cache(tmp_path):
    with HostCheckpointCache(HostCacheConfig(root=str(tmp_path / "cache"))) as c:
        yield c


@pytest.fixture
def model(tmp_path):
    p = str(tmp_path / "model.bin")
    with open(p, "wb") as f:
        f.write(b"\x01" * PAGE)
    return p


def test_a_path_with_a_nul_byte_is_refused_typed_by_load_contains_and_entry_path(cache, model):
    bad = model + "\0.evil"
    with PagePool(16 * PAGE, page_bytes=PAGE, prefault=False) as pool:
        slot = pool.create_slot(4 * PAGE, "s")
        with pytest.raises(InvalidArgumentError, match="NUL byte") as ei:
            cache.load(slot, [(bad, 0, 0, PAGE)])
        assert ei.value.path == repr(bad) and "Fix" in str(ei.value)
        assert (slot.mapped_pages, pool.free_pages) == (0, 16)
        cache.load(slot, [(model, 0, 0, PAGE)]).wait()  # the cache works on
    for call in (cache.contains, cache.entry_path):
        with pytest.raises(InvalidArgumentError, match="NUL byte") as ei:
            call(bad)
        assert ei.value.path == repr(bad)
    assert cache.contains(model)


def test_a_missing_checkpoint_is_not_cached_and_has_no_entry_path(cache, tmp_path):
    gone = str(tmp_path / "gone.bin")
    assert cache.contains(gone) is False
    assert cache.contains(tmp_path / "model.bin" / "x") is False  # under a file that is not there either
    with pytest.raises(InvalidArgumentError, match="gone.bin") as ei:
        cache.entry_path(gone)
    assert ei.value.path == gone
