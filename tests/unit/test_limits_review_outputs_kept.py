"""Results that cannot be written are kept in the temporary folder (``outputs.write_json_atomic``) under a name no
other user can know in advance. Found in review (several users of one machine): the name was
``$TMPDIR/warmserve-PID-NAME``, so another user could plant a link there first, and a run whose --json failed wrote
its results over the file the link named (``write_atomic`` follows links), any file the run's user can write."""

from __future__ import annotations

import json
import os
import stat
import tempfile

import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.outputs import write_json_atomic

RESULTS = {"requests": 7}


def test_a_planted_link_at_the_pids_name_is_not_followed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the shared temporary folder of the run
    victim = tmp_path / "victim.rc"
    victim.write_text("precious\n")
    os.symlink(victim, tmp_path / f"warmserve-{os.getpid()}-out.json")  # what another user would plant
    with pytest.raises(InvalidArgumentError) as caught:
        write_json_atomic(str(tmp_path / "no-such-folder" / "out.json"), RESULTS)
    assert victim.read_text() == "precious\n"
    kept = caught.value.kept
    assert kept and kept in str(caught.value) and os.path.dirname(kept) == str(tmp_path)
    st = os.lstat(kept)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    with open(kept) as f:
        assert json.load(f) == RESULTS
