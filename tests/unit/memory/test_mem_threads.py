"""Several Python threads hammering one pool: map/unmap/move/load/queries at once, then exact accounting."""

import threading

import numpy as np
import pytest
import torch

from warmserve.errors import MappingLimitError, OutOfMemoryError
from warmserve.memory import PagePool

PAGE = 4096


def test_concurrent_map_unmap_move_load():
    total, n_threads, rounds = 256, 4, 150
    data = np.random.default_rng(1).integers(0, 256, 6 * PAGE, dtype=np.uint8)
    errors: list[BaseException] = []
    with PagePool(total * PAGE, page_bytes=PAGE) as pool:
        stop = threading.Event()

        def worker(k: int) -> None:
            rng = np.random.default_rng(k)
            a = pool.create_slot(32 * PAGE, f"a{k}")
            b = pool.create_slot(32 * PAGE, f"b{k}")
            try:
                for r in range(rounds):
                    off = int(rng.integers(0, 16))
                    n = int(rng.integers(1, 8))
                    try:
                        a.map(off, n)
                    except OutOfMemoryError:
                        continue  # the other threads hold the pages right now
                    mark = (k * 31 + r) % 251
                    a.tensor(off * PAGE, (n, PAGE), torch.uint8)[:, 0] = mark
                    a.move_pages(off, n, b, 16)
                    assert b.tensor(16 * PAGE, (n, PAGE), torch.uint8)[:, 0].tolist() == [mark] * n
                    b.unmap(16, n)
                    if r % 10 == 0:
                        try:
                            a.load([(data, 0, 100, 5 * PAGE)]).wait(timeout_s=60)
                        except OutOfMemoryError:
                            continue
                        assert a.tensor(100, (5 * PAGE,), torch.uint8).numpy().tobytes() == data[:5 * PAGE].tobytes()
                        a.shrink(a.mapped_pages)
                assert a.mapped_pages == 0 and b.mapped_pages == 0
            except BaseException as e:  # reported by the main thread
                errors.append(e)
            finally:
                a.close()
                b.close()

        def observer() -> None:
            try:
                while not stop.is_set():
                    tags = pool.pages_by_tag()
                    assert sum(tags.values()) == total, tags
                    pool.stats()
            except BaseException as e:  # reported by the main thread
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
        obs = threading.Thread(target=observer)
        obs.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        stop.set()
        obs.join(timeout=30)
        hung = [t.name for t in threads + [obs] if t.is_alive()]
        assert not hung, f"threads still running after their join timeout: {hung}"
        assert not errors, errors
        assert pool.free_pages == total and pool.pages_by_tag() == {"free": total}
        assert pool.stats()["move_ops"] > 0


@pytest.mark.slow
def test_mapping_limit_is_an_error_with_numbers_not_a_crash():
    # Every other page mapped on its own costs two kernel mappings (page + PROT_NONE gap): 40,000 of them pass
    # vm.max_map_count (65,530 by default) well before the end.
    n = 80_000
    with PagePool(n * PAGE, page_bytes=PAGE, prefault=False) as pool:
        s = pool.create_slot(2 * n * PAGE, "sparse")
        hit = None
        for off in range(0, 2 * n, 2):
            try:
                s.map(off, 1)
            except MappingLimitError as e:
                hit = e
                break
        mapped = s.mapped_pages
        s.close()  # gives the mappings back before anything else needs one
        assert hit is not None, "expected to reach vm.max_map_count"
        assert hit.max_mappings > 0 and hit.mappings + 16 >= hit.max_mappings
        assert "max_map_count" in str(hit) and "Fix" in str(hit)
        assert mapped == off // 2  # the failed map left nothing behind
        assert pool.free_pages == n
