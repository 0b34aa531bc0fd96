"""Names that are not UTF-8, found in review of memory/pool.py and memory/host_cache.py: Linux file names are bytes,
and a checkpoint named with one that is not UTF-8 (os.listdir hands it back with surrogate escapes, and open()
reads it) could not be loaded at all (a bare RuntimeError from pybind's cast to std::string), by Slot.load or
through the host cache; a slot tag with a lone surrogate came back as a bare TypeError."""

from __future__ import annotations

import os

import pytest
import torch

from warmserve.errors import InvalidArgumentError
from warmserve.memory import PagePool
from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache

PAGE = 4096


@pytest.fixture
def odd_name(tmp_path):
    """A checkpoint of two pages whose file name is not UTF-8, as a directory scan names it (surrogate escapes)."""
    with open(os.path.join(os.fsencode(tmp_path), b"model-\xff.bin"), "wb") as f:
        f.write(b"\x07" * PAGE + b"\x09" * PAGE)
    (name,) = os.listdir(tmp_path)
    assert "\udcff" in name
    return os.path.join(str(tmp_path), name)


def test_slot_load_reads_a_file_whose_name_is_not_utf8(odd_name, tmp_path):
    with PagePool(16 * PAGE, page_bytes=PAGE, prefault=False) as pool:
        slot = pool.create_slot(4 * PAGE, "s")
        assert slot.load([(odd_name, 0, 0, 2 * PAGE)]).wait() == 2 * PAGE  # before: RuntimeError "Unable to cast"
        got = slot.tensor(0, (2 * PAGE,), torch.uint8)
        assert got[0].item() == 7 and got[PAGE].item() == 9
        del got
        # a missing such file: the typed error, its message naming the bytes (not a UnicodeDecodeError)
        with pytest.raises(InvalidArgumentError, match=r"cannot open .*model-\\xfe\.bin"):
            slot.load([(odd_name.replace("\udcff", "\udcfe"), 0, 0, PAGE)])
        slot.close()


def test_the_host_cache_fills_and_serves_a_file_whose_name_is_not_utf8(odd_name, tmp_path):
    cfg = HostCacheConfig(root=str(tmp_path / "cache"), capacity_bytes=16 << 20, chunk_bytes=64 << 10)
    with PagePool(16 * PAGE, page_bytes=PAGE, prefault=False) as pool, HostCheckpointCache(cfg) as cache:
        for expect in ("fills", "hits"):
            slot = pool.create_slot(4 * PAGE, expect)
            # before: UnicodeEncodeError from the entry key's hash of the path
            assert cache.load(slot, [(odd_name, PAGE, 0, PAGE)]).wait() == PAGE
            assert cache.stats()[expect] == 1
            assert slot.tensor(0, (1,), torch.uint8).item() == 9
            slot.close()
        assert cache.contains(odd_name)


def test_a_tag_with_a_lone_surrogate_is_refused_typed():
    with PagePool(16 * PAGE, page_bytes=PAGE, prefault=False) as pool:
        with pytest.raises(InvalidArgumentError, match="tag"):  # before: TypeError from pybind
            pool.create_slot(PAGE, "model-\udcff")
        slot = pool.create_slot(PAGE, "s")
        with pytest.raises(InvalidArgumentError, match="tag"):
            slot.tag = "model-\udcff"
        assert slot.tag == "s"
        slot.tag = "modèle"  # any other str is a tag
        assert slot.tag == "modèle" and pool.pages_by_tag() == {"free": 16}
        slot.close()


def test_a_name_with_byte_ff_and_one_spelling_backslash_x_f_f_are_two_cache_entries(tmp_path):
    """Found in review: the path was hashed with its odd bytes backslash-escaped, so m-<0xff>.bin and m-\\xff.bin
    shared a path hash, and each fill evicted the other as an older version of the same file (no hit ever)."""
    with open(os.path.join(os.fsencode(tmp_path), b"m-\xff.bin"), "wb") as f:
        f.write(b"\x07" * PAGE)
    with open(os.path.join(os.fsencode(tmp_path), b"m-\\xff.bin"), "wb") as f:
        f.write(b"\x09" * PAGE)
    a, b = (os.path.join(str(tmp_path), n) for n in sorted(os.listdir(tmp_path)))
    cfg = HostCacheConfig(root=str(tmp_path / "cache"), capacity_bytes=16 << 20, chunk_bytes=64 << 10)
    with PagePool(16 * PAGE, page_bytes=PAGE, prefault=False) as pool, HostCheckpointCache(cfg) as cache:
        for i, p in enumerate((a, b, a, b)):
            slot = pool.create_slot(PAGE, f"s{i}")
            assert cache.load(slot, [(p, 0, 0, PAGE)]).wait() == PAGE
            slot.close()
        assert cache.contains(a) and cache.contains(b)
        s = cache.stats()
        assert (s["fills"], s["hits"], s["invalidated"]) == (2, 2, 0)


def test_a_path_with_a_lone_surrogate_no_name_gives_is_refused_typed(tmp_path):
    """A surrogate outside the escapes of odd bytes (U+DC80-U+DCFF) encodes to no file name: typed refusals, not
    a bare UnicodeEncodeError (found in review)."""
    p = str(tmp_path / "model-\ud800.bin")
    cfg = HostCacheConfig(root=str(tmp_path / "cache"), capacity_bytes=16 << 20, chunk_bytes=64 << 10)
    with PagePool(16 * PAGE, page_bytes=PAGE, prefault=False) as pool, HostCheckpointCache(cfg) as cache:
        slot = pool.create_slot(PAGE, "s")
        with pytest.raises(InvalidArgumentError, match="names no file"):
            slot.load([(p, 0, 0, PAGE)])
        with pytest.raises(InvalidArgumentError, match="names no file"):
            cache.load(slot, [(p, 0, 0, PAGE)])
        slot.close()
