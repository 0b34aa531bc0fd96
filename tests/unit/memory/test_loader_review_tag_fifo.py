"""Loads, found in review of csrc/loader.cpp: a load's error messages copied the slot's tag without the pool mutex
while Slot.tag's setter rewrote it under the mutex (a data race on a std::string: half-old half-new tags in
CancelledError texts, or a crash); and a source path that is a FIFO made slot.load(), documented to return at
once, block for good in open() (a directory passed, and failed later as a DriverError EISDIR)."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import torch

from warmserve.errors import InvalidArgumentError, WarmServeError
from warmserve.memory import PagePool

PAGE = 4096
# Long tags live on the heap, so a torn copy shows as a mix of the two (or as freed memory).
TAGS = ("A" * 300, "B" * 5000)


def _names_one_tag(message: str) -> bool:
    return any(f"'{t}'" in message for t in TAGS)


# Cancelled loads (the message of result()) and refused loads (the constructor's messages) while another thread
# renames the slot: every message names one whole tag.
@pytest.mark.parametrize("kind", ["cancelled", "outside_slot"])
def test_load_messages_name_one_whole_tag_while_the_tag_changes(kind):
    deadline_s = 4.0
    with PagePool(64 * PAGE, page_bytes=PAGE, prefault=False) as pool:
        slot = pool.create_slot(16 * PAGE, TAGS[0])
        buf = np.zeros(PAGE, np.uint8)
        stop = threading.Event()

        def rename():
            i = 0
            while not stop.is_set():
                slot.tag = TAGS[i & 1]
                i += 1

        setter = threading.Thread(target=rename)
        setter.start()
        torn, seen = [], 0
        try:
            end = time.monotonic() + deadline_s
            while time.monotonic() < end and not torn:
                try:
                    if kind == "cancelled":
                        job = slot.load([(buf, 0, 0, PAGE)], chunk_bytes=1024)
                        job.cancel()
                        job.wait()
                    else:
                        slot.load([(buf, 0, 16 * PAGE, PAGE)])
                except WarmServeError as e:
                    seen += 1
                    if not _names_one_tag(str(e)):
                        torn.append(str(e)[:120])
        finally:
            stop.set()
            setter.join()
    assert seen > 0
    assert not torn, f"{len(torn)} of {seen} messages name a torn tag: {torn[0]!r}"


def _load_in_thread(slot, path, nbytes):
    res = {}

    def go():
        try:
            res["job"] = slot.load([(path, 0, 0, nbytes)])
        except Exception as e:  # noqa: BLE001 - the test looks at what came back
            res["err"] = e

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t, res


# A FIFO source: slot.load returns at once with InvalidArgumentError naming the path (it blocked in open()).
def test_load_from_a_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "ckpt.fifo"
    os.mkfifo(fifo)
    with PagePool(16 * PAGE, page_bytes=PAGE, prefault=False) as pool:
        slot = pool.create_slot(PAGE, "fifo")
        t, res = _load_in_thread(slot, str(fifo), 8)
        t.join(5)
        blocked = t.is_alive()
        if blocked:  # unblock the open() so the thread ends (a writer appears, then goes)
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            t.join(5)
        assert not blocked, "slot.load blocked on a FIFO source"
        err = res.get("err")
        assert isinstance(err, InvalidArgumentError), res
        assert str(fifo) in str(err) and "regular file" in str(err)
        assert pool.free_pages == pool.total_pages  # nothing mapped, nothing pinned
        slot.close()


# A directory or a character device: refused when the load starts, typed, naming the path.
@pytest.mark.parametrize("which", ["directory", "device"])
def test_load_from_a_non_regular_file_is_refused(tmp_path, which):
    path = str(tmp_path) if which == "directory" else "/dev/zero"
    with PagePool(16 * PAGE, page_bytes=PAGE, prefault=False) as pool:
        slot = pool.create_slot(PAGE, "dir")
        with pytest.raises(InvalidArgumentError, match="regular file") as info:
            slot.load([(path, 0, 0, 8)]).wait(10)
        assert path in str(info.value)
        # A regular file still loads, through the same descriptor handling (O_NONBLOCK cleared again).
        f = tmp_path / "w.bin"
        f.write_bytes(bytes(range(256)) * 16)
        assert slot.load([(str(f), 0, 0, PAGE)]).wait(10) == PAGE
        assert bytes(slot.tensor(0, (PAGE,), torch.uint8).numpy()) == f.read_bytes()
