"""The host checkpoint cache's default directory on a machine of several users (``cache_files.default_root``): the
shared /dev/shm/warmserve-ckpt while it is absent or this user's, else this user's own -UID beside it. Found in
review: a second user's `warmserve serve --host-cache-gib 0.5` stopped at start because the first user's 0700
directory held the one default path. Needs root to give a directory to another uid (CI runs as root here)."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.memory.cache_files import check_root, default_root

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown a directory to another uid and to "
                                                          "act as another user (CI runs as root here)")
OTHER_UID = 65534  # nobody


def test_absent_or_own_shared_dir_is_the_default(tmp_path):
    shared = str(tmp_path / "warmserve-ckpt")
    assert default_root(shared) == shared
    os.mkdir(shared, 0o700)
    assert default_root(shared) == shared


@needs_root
def test_another_users_shared_dir_gives_this_users_own(tmp_path):
    shared = str(tmp_path / "warmserve-ckpt")
    os.mkdir(shared, 0o700)
    os.chown(shared, OTHER_UID, OTHER_UID)
    mine = default_root(shared)
    assert mine == f"{shared}-{os.geteuid()}"
    with pytest.raises(InvalidArgumentError, match="owned by uid 65534"):
        check_root(shared)  # what the default was before: the start refused
    check_root(mine)
    st = os.stat(mine)
    assert (st.st_uid, st.st_mode & 0o777) == (os.geteuid(), 0o700)


@needs_root
# Python 3.12+ warns at an os.fork() while threads run (left by other tests here), found running these on 3.13
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_second_user_starts_beside_the_first():
    """A forked child acting as uid 65534 (it cannot exec this Python, which may sit under root's home) takes the
    default beside root's 0700 one, makes it its own, and root's is left as it was."""
    base = tempfile.mkdtemp(prefix="wsr-limits-", dir="/dev/shm")
    try:
        os.chmod(base, 0o1777)  # as /dev/shm itself
        shared = os.path.join(base, "warmserve-ckpt")
        os.mkdir(shared, 0o700)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            word = b"?"
            try:
                os.setegid(OTHER_UID)
                os.seteuid(OTHER_UID)
                root = default_root(shared)
                check_root(root)
                st = os.stat(root)
                word = f"{root}|{st.st_uid}|{st.st_mode & 0o777:o}".encode()
            except BaseException as e:
                word = f"error: {type(e).__name__}: {e}".encode()
            finally:
                os.write(w, word)
                os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            said = f.read().decode()
        os.waitpid(pid, 0)
        assert said == f"{shared}-{OTHER_UID}|{OTHER_UID}|700", said
        assert os.stat(shared).st_uid == 0 and not os.listdir(shared)
    finally:
        shutil.rmtree(base, ignore_errors=True)
