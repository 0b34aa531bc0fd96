"""The cuda backend of the memory core, on a real GPU (skipped without one)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs an NVIDIA GPU", allow_module_level=True)

from warmserve.errors import InvalidArgumentError, OutOfMemoryError, ViewsAliveError  # noqa: E402
from warmserve.memory import PAGE_BYTES, PagePool, cuda_compiled  # noqa: E402

pytestmark = pytest.mark.gpu
if not cuda_compiled():
    pytest.skip("this build has no cuda backend (cuda.h was not found at build time)", allow_module_level=True)


@pytest.fixture
def pool():
    with PagePool(32 * PAGE_BYTES, backend="cuda") as p:
        yield p


def test_map_view_write_read(pool):
    assert pool.backend == "cuda" and pool.total_pages == 32 and not pool.huge_pages
    s = pool.create_slot(8 * PAGE_BYTES, "s")
    s.map(0, 3)
    t = s.tensor(0, (3, PAGE_BYTES // 4), torch.float32)
    assert t.device.type == "cuda" and t.data_ptr() == s.base_address
    t.copy_(torch.arange(3, device="cuda", dtype=torch.float32)[:, None].expand_as(t))
    torch.cuda.synchronize()
    assert t[:, 0].tolist() == [0.0, 1.0, 2.0]
    assert pool.pages_by_tag() == {"s": 3, "free": 29}
    with pytest.raises(ViewsAliveError):
        s.unmap(0, 1)
    del t
    s.unmap(0, 3)
    assert pool.free_pages == 32


def test_move_keeps_contents_without_copy(pool):
    a = pool.create_slot(8 * PAGE_BYTES, "prewarm")
    b = pool.create_slot(8 * PAGE_BYTES, "instance")
    a.map(0, 4)
    a.tensor(0, (4 * PAGE_BYTES,), torch.uint8).fill_(7)
    ids = a.physical_pages(0, 4)
    torch.cuda.synchronize()
    a.move_pages(0, 4, b, 2)
    assert b.physical_pages(2, 4) == ids
    v = b.tensor(2 * PAGE_BYTES, (4 * PAGE_BYTES,), torch.uint8)
    assert int(v.min()) == 7 == int(v.max())


def test_load_from_file_and_buffer(pool, tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 5 * PAGE_BYTES + 123, dtype=np.uint8)
    path = tmp_path / "w.bin"
    data.tofile(path)
    s = pool.create_slot(16 * PAGE_BYTES, "w")
    assert s.load([(path, 0, 0, data.nbytes)]).wait(timeout_s=60) == data.nbytes
    assert s.load([(data, 0, 8 * PAGE_BYTES, data.nbytes)]).wait(timeout_s=60) == data.nbytes
    got = s.tensor(0, (data.nbytes,), torch.uint8).cpu().numpy()
    got2 = s.tensor(8 * PAGE_BYTES, (data.nbytes,), torch.uint8).cpu().numpy()
    assert (got == data).all() and (got2 == data).all()
    assert pool.stats()["bytes_loaded"] == 2 * data.nbytes


def test_exhaustion_and_bad_arguments(pool):
    s = pool.create_slot(64 * PAGE_BYTES, "s")
    s.map(0, 30)
    with pytest.raises(OutOfMemoryError) as ei:
        s.map(30, 3)
    assert ei.value.free_bytes == 2 * PAGE_BYTES
    with pytest.raises(InvalidArgumentError):
        s.map(29, 1)
    with pytest.raises(InvalidArgumentError, match="granularity"):
        PagePool(PAGE_BYTES, backend="cuda", page_bytes=4096)


def test_pool_larger_than_the_device():
    free, total = torch.cuda.mem_get_info()
    with pytest.raises(OutOfMemoryError) as ei:
        PagePool((total // PAGE_BYTES + 16) * PAGE_BYTES, backend="cuda")
    assert ei.value.total_bytes == total


def test_pages_larger_than_the_granularity():
    # 6 MiB pages: not a power of two, so the reservation is aligned to the granularity instead.
    page = 3 * PAGE_BYTES
    with PagePool(4 * page, backend="cuda", page_bytes=page) as p:
        s = p.create_slot(3 * page, "s")
        s.map(0, 3)
        s.tensor(0, (3 * page,), torch.uint8).fill_(5)
        s.unmap(1, 2)
        s.map(1, 2)  # the per-page unmap left nothing behind: the same addresses map again
        assert int(s.tensor(0, (page,), torch.uint8).max()) == 5


def test_unmap_waits_for_queued_kernels(pool):
    s = pool.create_slot(8 * PAGE_BYTES, "s")
    s.map(0, 4)
    t = s.tensor(0, (4 * PAGE_BYTES // 4,), torch.float32)
    a = torch.randn(2048, 2048, device="cuda")
    for _ in range(20):  # keep the stream busy so the writes below are still queued when unmap runs
        a = a @ a / 2048
    t.fill_(1.0).add_(a.sum())
    del t
    s.unmap(0, 4)  # must not pull the pages from under the queued kernels (that would fault and kill the context)
    torch.cuda.synchronize()  # raises (CUDA error: an illegal memory access) if a queued kernel faulted
    s.map(0, 1)
    assert s.tensor(0, (4,), torch.float32).cpu().shape == (4,)


def test_calls_leave_the_callers_context_alone(pool):
    # Every driver call pushes the pool's context and pops it again: a thread that had no current context has
    # none afterwards (cuCtxSetCurrent used to leave the pool's there, retargeting torch on that thread).
    import ctypes
    import threading

    cuda = ctypes.CDLL("libcuda.so.1")
    seen = []

    def fresh_thread():
        try:
            s = pool.create_slot(2 * PAGE_BYTES, "t")
            s.map(0, 2)
            s.unmap(0, 1)
            s.close()
            ctx = ctypes.c_void_p()
            assert cuda.cuCtxGetCurrent(ctypes.byref(ctx)) == 0
            seen.append(ctx.value)
        except BaseException as e:  # reported by the test's thread
            seen.append(e)

    t = threading.Thread(target=fresh_thread)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive() and seen == [None], seen


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_a_device_1_pool_leaves_torch_on_device_0():
    torch.cuda.set_device(0)
    torch.zeros(1, device="cuda")
    with PagePool(4 * PAGE_BYTES, backend="cuda", device=1) as p:
        s = p.create_slot(2 * PAGE_BYTES, "s")
        s.map(0, 2)
        s.unmap(1, 1)
        assert torch.cuda.current_device() == 0
        assert torch.ones(1, device="cuda").device.index == 0
        s.close()


def test_pool_close_keeps_pages_under_live_views():
    p = PagePool(4 * PAGE_BYTES, backend="cuda")
    s = p.create_slot(2 * PAGE_BYTES, "s")
    s.map(0, 2)
    v = s.tensor(0, (PAGE_BYTES,), torch.uint8)
    v.fill_(4)
    del s
    p.close()
    torch.cuda.synchronize()
    assert int(v.max()) == 4 == int(v.min())
    del v  # the last view: its slot unmaps, the pool's pages go with the pool
    torch.cuda.synchronize()
