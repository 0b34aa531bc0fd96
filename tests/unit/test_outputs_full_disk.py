"""The long-running commands' outputs on a full disk (found in the review of a hostile file system, 2026-12-07): the
check before the run wrote an empty file, which takes no block, so a full disk passed it and the run failed at its
end; and a JSON that could not be written then lost the results, with an OSError naming no path. Now the check
writes a byte, and results that cannot be written are kept in the temporary folder, the typed error naming both
paths. /dev/full (writes fail with ENOSPC) stands for a full disk without a mount; a real 1 MiB tmpfs where this
process may mount one."""

from __future__ import annotations

import json
import os

import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.outputs import check_output, write_json_atomic

RESULTS = {"policies": {"warmserve": {"ttft_p99_s": 0.91}}, "requests": 1234}


def test_results_that_cannot_be_written_are_kept_and_the_error_names_both_paths():
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    with pytest.raises(InvalidArgumentError) as caught:
        write_json_atomic("/dev/full", RESULTS, indent=1)
    e = caught.value
    assert "cannot write /dev/full (No space left on device" in str(e) and "Fix:" in str(e), e
    assert e.kept and e.kept in str(e), e
    try:
        with open(e.kept) as f:
            assert json.load(f) == RESULTS
    finally:
        os.unlink(e.kept)


def test_a_full_disk_is_refused_before_the_run(full_tmpfs):  # a real full 1 MiB tmpfs: tests/conftest.py
    full_folder = full_tmpfs / "dir"
    with pytest.raises(InvalidArgumentError, match="No space left on device.*free space there") as caught:
        check_output("--json", str(full_folder / "out.json"))
    assert caught.value.path == str(full_folder / "out.json")
    assert os.listdir(full_folder) == []  # the check's file is gone
