"""Random sequences of map / unmap / move / load / grow / shrink / write over several slots, checked after every
step against a plain Python model of the pool: contents byte for byte, accounting, and no page mapped twice.

The model also follows physical pages: a page that is unmapped keeps its bytes, so mapping it again (anywhere)
must show them (never zeroed, never another page's). with_faults makes the k-th next mmap / mremap / PROT_NONE
call of the host backend fail (warmserve._C._debug_fail_after, test-only) during one operation: the operation
then either succeeds or fails with DriverError leaving everything as it was (all or nothing)."""

import os
import tempfile
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import torch
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from warmserve import _C
from warmserve.errors import DriverError, InvalidArgumentError, OutOfMemoryError
from warmserve.memory import PagePool

PAGE = 4096
TOTAL = 40
SLOT_PAGES = (12, 20, 28)
slot_ix = st.integers(0, len(SLOT_PAGES) - 1)
offsets = st.integers(0, 30)
counts = st.integers(1, 10)
FAULT_OPS = ("mmap", "mremap", "protect")
# op -> k (0: not armed). With mremap working, a map fails only when an mremap AND the mmap fallback fail.
faults = st.fixed_dictionaries({"mmap": st.integers(0, 2), "mremap": st.integers(0, 3), "protect": st.integers(0, 3)})


def pattern(seed: int, n: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


class PoolMachine(RuleBasedStateMachine):
    no_mremap = False

    def __init__(self):
        super().__init__()
        if self.no_mremap:  # the fallback path: pages mapped from the memfd, page tables rebuilt by faults
            os.environ["WARMSERVE_HOST_NO_MREMAP"] = "1"
        try:
            self.pool = PagePool(TOTAL * PAGE, page_bytes=PAGE)
        finally:
            os.environ.pop("WARMSERVE_HOST_NO_MREMAP", None)
        if self.no_mremap:
            assert not self.pool.stats()["moves_page_tables"]
        self.slots = [self.pool.create_slot(n * PAGE, f"s{i}") for i, n in enumerate(SLOT_PAGES)]
        self.model: list[dict[int, bytes]] = [{} for _ in SLOT_PAGES]  # slot page -> its bytes
        # Bytes of each unmapped physical page, where known (a fresh memfd is zeros); a page missing here is
        # unknown (a failed load wrote some of it before rolling back) and is taken as it is when mapped.
        self.phys: dict[int, bytes] = {pid: bytes(PAGE) for pid in range(TOTAL)}
        self.faulty = False  # inside with_faults: an injected DriverError is an allowed outcome
        self.seed = 0
        self.tmp = tempfile.TemporaryDirectory()

    # -- helpers
    def free(self) -> int:
        return TOTAL - sum(len(m) for m in self.model)

    def read(self, i: int, page: int) -> bytes:
        return self.slots[i].tensor(page * PAGE, (PAGE,), torch.uint8, pinned=False).numpy().tobytes()

    def next_seed(self) -> int:
        self.seed += 1
        return self.seed

    def attempt(self, call) -> bool:
        """Runs call(); False when it failed with an injected fault (then nothing may have changed)."""
        try:
            call()
            return True
        except DriverError:
            if not self.faulty:
                raise
            return False

    def mapped_fresh(self, i: int, page: int) -> bytes:
        """The bytes of a page just mapped: its physical page's bytes from when it was last unmapped."""
        pid = self.slots[i].physical_pages(page, 1)[0]
        got = self.read(i, page)
        want = self.phys.pop(pid, None)
        assert want is None or got == want, f"slot {i} page {page} (pool page {pid}) lost its bytes"
        return got

    def unmapped(self, i: int, pages, ids) -> None:
        for p, pid in zip(pages, ids):
            self.phys[pid] = self.model[i].pop(p)

    # -- rules
    @rule(i=slot_ix, off=offsets, n=counts)
    def map(self, i, off, n):
        m = self.model[i]
        if off + n > SLOT_PAGES[i] or any(p in m for p in range(off, off + n)):
            try:
                self.slots[i].map(off, n)
            except InvalidArgumentError:
                return
            raise AssertionError("map should have failed")
        if n > self.free():
            try:
                self.slots[i].map(off, n)
            except OutOfMemoryError as e:
                assert e.asked_bytes == n * PAGE and e.free_bytes == self.free() * PAGE
                return
            raise AssertionError("map should have run out of pages")
        if not self.attempt(lambda: self.slots[i].map(off, n)):
            return
        for p in range(off, off + n):
            m[p] = self.mapped_fresh(i, p)

    @precondition(lambda self: any(self.model))
    @rule(data=st.data())
    def write(self, data):
        i = data.draw(st.sampled_from([k for k, m in enumerate(self.model) if m]))
        p = data.draw(st.sampled_from(sorted(self.model[i])))
        b = pattern(self.next_seed(), PAGE)
        self.slots[i].tensor(p * PAGE, (PAGE,), torch.uint8).copy_(torch.frombuffer(bytearray(b), dtype=torch.uint8))
        self.model[i][p] = b

    @rule(i=slot_ix, off=offsets, n=counts)
    def unmap(self, i, off, n):
        m = self.model[i]
        if off + n > SLOT_PAGES[i] or any(p not in m for p in range(off, off + n)):
            try:
                self.slots[i].unmap(off, n)
            except InvalidArgumentError:
                return
            raise AssertionError("unmap should have failed")
        ids = self.slots[i].physical_pages(off, n)
        if self.attempt(lambda: self.slots[i].unmap(off, n)):
            self.unmapped(i, range(off, off + n), ids)

    @rule(i=slot_ix, j=slot_ix, off=offsets, n=counts, dst_off=offsets)
    def move(self, i, j, off, n, dst_off):
        src, dst = self.model[i], self.model[j]
        ok = (off + n <= SLOT_PAGES[i] and dst_off + n <= SLOT_PAGES[j]
              and all(p in src for p in range(off, off + n))
              and all(p not in dst for p in range(dst_off, dst_off + n)))
        if not ok:
            try:
                self.slots[i].move_pages(off, n, self.slots[j], dst_off)
            except InvalidArgumentError:
                return
            raise AssertionError("move should have failed")
        ids = self.slots[i].physical_pages(off, n)
        if not self.attempt(lambda: self.slots[i].move_pages(off, n, self.slots[j], dst_off)):
            return
        assert self.slots[j].physical_pages(dst_off, n) == ids  # no copy: the same pages
        moved = [src.pop(off + k) for k in range(n)]
        for k, b in enumerate(moved):
            dst[dst_off + k] = b

    @rule(i=slot_ix, start=st.integers(0, 30 * PAGE), nbytes=st.integers(1, 6 * PAGE), from_file=st.booleans(),
          chunk=st.sampled_from([PAGE // 2, PAGE, 3 * PAGE]))
    def load(self, i, start, nbytes, from_file, chunk):
        m = self.model[i]
        b = pattern(self.next_seed(), nbytes)
        src = b
        if from_file:
            src = Path(self.tmp.name) / f"{self.seed}.bin"
            src.write_bytes(b"x" * 7 + b)
        source = (src, 7 if from_file else 0, start, nbytes)
        end = start + nbytes
        pages = range(start // PAGE, (end - 1) // PAGE + 1)
        if end > SLOT_PAGES[i] * PAGE:
            try:
                self.slots[i].load([source])
            except InvalidArgumentError:
                return
            raise AssertionError("load should have failed")
        missing = [p for p in pages if p not in m]
        if len(missing) > self.free():
            try:
                self.slots[i].load([source])
            except OutOfMemoryError:
                return
            raise AssertionError("load should have run out of pages")
        loaded_before = self.pool.stats()["bytes_loaded"]
        if not self.attempt(lambda: self.slots[i].load([source], chunk_bytes=chunk).wait(timeout_s=30)):
            # Rolled back: the pages it mapped are unmapped again, with some of the load's bytes in them (which
            # free page got which is not known here); pages mapped before keep whatever the copy reached.
            assert self.pool.stats()["bytes_loaded"] == loaded_before
            self.phys.clear()
            for p in pages:
                if p in m:
                    m[p] = self.read(i, p)
            return
        assert self.pool.stats()["bytes_loaded"] == loaded_before + nbytes
        for p in pages:
            if p in m:
                page = bytearray(m[p])
            else:  # freshly mapped by the load: its physical page's old bytes around the loaded range
                pid = self.slots[i].physical_pages(p, 1)[0]
                page = bytearray(self.phys.pop(pid, None) or self.read(i, p))
            lo, hi = max(start, p * PAGE), min(end, (p + 1) * PAGE)
            page[lo - p * PAGE:hi - p * PAGE] = b[lo - start:hi - start]
            m[p] = bytes(page)

    @rule(i=slot_ix, n=counts)
    def grow(self, i, n):
        m = self.model[i]
        off = max(m) + 1 if m else 0
        if off + n > SLOT_PAGES[i] or n > self.free():
            try:
                self.slots[i].grow(n)
            except (InvalidArgumentError, OutOfMemoryError):
                return
            raise AssertionError("grow should have failed")
        got = []
        if not self.attempt(lambda: got.append(self.slots[i].grow(n))):
            return
        assert got == [off]
        for p in range(off, off + n):
            m[p] = self.mapped_fresh(i, p)

    @rule(i=slot_ix, n=counts)
    def shrink(self, i, n):
        m = self.model[i]
        if n > len(m):
            try:
                self.slots[i].shrink(n)
            except InvalidArgumentError:
                return
            raise AssertionError("shrink should have failed")
        top = sorted(m)[-n:]
        ids = [self.slots[i].physical_pages(p, 1)[0] for p in top]
        if self.attempt(lambda: self.slots[i].shrink(n)):
            self.unmapped(i, top, ids)

    @rule(data=st.data(), arms=faults, action=st.sampled_from(["map", "unmap", "move", "load", "grow", "shrink"]))
    def with_faults(self, data, arms, action):
        draw = {
            "map": dict(i=slot_ix, off=offsets, n=counts),
            "unmap": dict(i=slot_ix, off=offsets, n=counts),
            "move": dict(i=slot_ix, j=slot_ix, off=offsets, n=counts, dst_off=offsets),
            "load": dict(i=slot_ix, start=st.integers(0, 30 * PAGE), nbytes=st.integers(1, 6 * PAGE),
                         from_file=st.booleans(), chunk=st.sampled_from([PAGE // 2, PAGE, 3 * PAGE])),
            "grow": dict(i=slot_ix, n=counts),
            "shrink": dict(i=slot_ix, n=counts),
        }[action]
        args = {name: data.draw(strategy, label=name) for name, strategy in draw.items()}
        self.faulty = True
        try:
            for op, k in arms.items():
                _C._debug_fail_after(op, k)
            getattr(self, action)(**args)
        finally:
            for op in FAULT_OPS:
                _C._debug_fail_after(op, 0)
            self.faulty = False

    # -- invariants
    @invariant()
    def accounting_and_contents(self):
        assert self.pool.free_pages == self.free()
        tags = {f"s{i}": len(m) for i, m in enumerate(self.model) if m}
        assert self.pool.pages_by_tag() == {**tags, "free": self.free()}
        seen = []
        for i, (slot, m) in enumerate(zip(self.slots, self.model)):
            assert slot.mapped_pages == len(m)
            assert [p for off, n in slot.mapped_ranges() for p in range(off, off + n)] == sorted(m)
            for p, b in m.items():
                assert self.read(i, p) == b, f"slot {i} page {p} changed"
            ids = slot.physical_pages(0, SLOT_PAGES[i])
            seen += [x for x in ids if x >= 0]
        assert len(seen) == len(set(seen)) and all(0 <= x < TOTAL for x in seen)  # no page mapped twice

    def teardown(self):
        for s in self.slots:
            s.close()
        assert self.pool.free_pages == TOTAL and self.pool.pages_by_tag() == {"free": TOTAL}
        self.pool.close()
        self.tmp.cleanup()


class FallbackPoolMachine(PoolMachine):
    no_mremap = True


_settings = settings(max_examples=60, stateful_step_count=25, deadline=None, derandomize=True,
                     suppress_health_check=[HealthCheck.too_slow])
PoolMachine.TestCase.settings = _settings
FallbackPoolMachine.TestCase.settings = _settings
TestPoolMachine = PoolMachine.TestCase
TestFallbackPoolMachine = FallbackPoolMachine.TestCase
