"""`warmserve.Cluster(...)` refuses constructor arguments of the wrong type with an InvalidArgumentError naming the
argument and what it takes, before anything starts; and a bind reachable from other hosts is refused with the fix
in this API's terms. Found in review: devices=5, log_dir=5 and ray_address=5 were bare TypeErrors, devices=b"cpu:0"
was taken byte by byte ("device 99 must look like 'cuda:0'"), and the InsecureBindError named the command line's
--curve-dir and --insecure."""

from __future__ import annotations

import threading
import time

import pytest

import warmserve
from warmserve.errors import InvalidArgumentError
from warmserve.security import InsecureBindError

import serving

MODEL = "llama-20m"


@pytest.mark.parametrize("kw, param, accepts", [
    (dict(devices=5), "devices", "list or tuple"),
    (dict(devices=b"cpu:0"), "devices", "list or tuple"),
    (dict(devices=["cpu:0", 1]), "devices", "list or tuple"),
    (dict(log_dir=5), "log_dir", "os.PathLike"),
    (dict(ray_address=5), "ray_address", "None"),
])
def test_constructor_arguments_of_the_wrong_type_are_typed_errors_naming_them(kw, param, accepts):
    path = serving.demo_paths((MODEL,))[MODEL]
    threads = set(threading.enumerate())
    t0 = time.monotonic()
    with pytest.raises(InvalidArgumentError) as ei:
        warmserve.Cluster([path], cpu_workers=1, cpu_worker_memory_bytes=512 << 20, **kw).close()
    assert ei.value.param == param and param in str(ei.value) and accepts in str(ei.value), str(ei.value)
    assert "device 99" not in str(ei.value)
    assert time.monotonic() - t0 < 10, "refused only after a start"
    assert not [t for t in threading.enumerate() if t not in threads and t.is_alive()], "a thread was left"


def test_an_unauthenticated_public_bind_names_the_python_arguments_that_fix_it():
    path = serving.demo_paths((MODEL,))[MODEL]
    with pytest.raises(InsecureBindError) as ei:
        warmserve.Cluster([path], cpu_workers=1, bind="tcp://0.0.0.0:0")
    msg = str(ei.value)
    assert "curve_dir=" in msg and "insecure=True" in msg, msg
    assert "--insecure" not in msg and "--curve-dir" not in msg, msg
    assert ei.value.endpoint == "tcp://0.0.0.0:0"


def test_a_log_dir_that_is_a_file_is_refused_before_anything_starts(tmp_path):
    """Found in review: a bare FileExistsError from inside the first worker's spawn, naming no argument."""
    path = serving.demo_paths((MODEL,))[MODEL]
    afile = tmp_path / "afile"
    afile.write_text("x")
    t0 = time.monotonic()
    with pytest.raises(InvalidArgumentError, match="log_dir .*afile: is a file, not a folder; give a folder"):
        warmserve.Cluster([path], cpu_workers=1, cpu_worker_memory_bytes=512 << 20, log_dir=afile).close()
    assert time.monotonic() - t0 < 10, "refused only after a start"
