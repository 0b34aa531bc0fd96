"""HostCacheConfig checks the types and ranges of its numbers when it is made (found in review: threads=2.5 and
chunk_bytes=1048576.0 were accepted, and every later load failed with a bare TypeError from the C++ binding;
threads="4" raised an untyped TypeError)."""
import dataclasses

import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.memory.host_cache import HostCacheConfig, HostCheckpointCache


@pytest.mark.parametrize("field, value", [
    ("threads", 2.5), ("threads", "4"), ("threads", True), ("threads", 0), ("threads", 1 << 31),
    ("chunk_bytes", float(1 << 20)), ("chunk_bytes", "1048576"), ("chunk_bytes", 1023), ("chunk_bytes", 1 << 64),
    ("capacity_bytes", 1.5 * (1 << 30)), ("capacity_bytes", 0), ("capacity_bytes", -1), ("capacity_bytes", None),
    ("lock_timeout_s", "600"), ("lock_timeout_s", -1.0), ("lock_timeout_s", float("nan")),
    pytest.param("lock_timeout_s", 10**400, id="lock_timeout_s-10**400"),
])
def test_a_bad_number_is_refused_when_the_config_is_made(tmp_path, field, value):
    with pytest.raises(InvalidArgumentError, match=field) as ei:
        HostCacheConfig(root=str(tmp_path), **{field: value})
    assert repr(value) in str(ei.value) and "Fix:" in str(ei.value)
    assert getattr(ei.value, field) is value or getattr(ei.value, field) != getattr(ei.value, field)  # NaN
    with pytest.raises(InvalidArgumentError, match=field):  # dataclasses.replace makes the config again
        dataclasses.replace(HostCacheConfig(root=str(tmp_path)), **{field: value})


def test_good_numbers_are_accepted(tmp_path):
    cfg = HostCacheConfig(root=str(tmp_path), capacity_bytes=1 << 20, threads=1, chunk_bytes=1 << 10,
                          lock_timeout_s=0)
    HostCheckpointCache(cfg).close()
    HostCacheConfig(root=str(tmp_path), lock_timeout_s=2.5)


def test_the_cache_takes_a_config_only(tmp_path):
    with pytest.raises(InvalidArgumentError, match="HostCacheConfig"):
        HostCheckpointCache({"root": str(tmp_path)})
