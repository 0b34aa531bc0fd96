"""``security.take_key_files``: the Ray launcher reads the local workers' CURVE certificates once and removes them, so
that no restart depends on them staying on disk and no secret key is left there by a controller killed with SIGKILL;
one that cannot be read is a typed error naming the file and the fix (tests/integration/test_ray_curve_keys.py
runs the launcher itself)."""

from __future__ import annotations

import pytest
import zmq.auth

from warmserve.errors import InvalidArgumentError
from warmserve.security import take_key_files


def test_key_files_are_read_then_removed(tmp_path):
    public, secret = zmq.auth.create_certificates(str(tmp_path), "local")
    want = (open(public, "rb").read(), open(secret, "rb").read())
    assert take_key_files((public, secret)) == want
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a key file was left on disk"
    assert take_key_files(None) is None


def test_a_key_file_gone_is_a_typed_error_naming_it_and_the_fix(tmp_path):
    public, secret = zmq.auth.create_certificates(str(tmp_path), "local")
    (tmp_path / "local.key_secret").unlink()
    with pytest.raises(InvalidArgumentError, match=r"local\.key_secret.*cannot be read.*TMPDIR") as e:
        take_key_files((public, secret))
    assert e.value.path == secret
    assert (tmp_path / "local.key").exists(), "nothing is removed when one cannot be read"
