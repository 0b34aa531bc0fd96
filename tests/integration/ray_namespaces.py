"""Running a test's body on a private local Ray cluster: Ray binds the machine's outward address whatever it is
told, so the body runs again (pytest in a child) inside private network and PID namespaces, where the only
interface is loopback and every process started there dies with the namespace. Needs root, unshare and ip."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import traceback

import pytest

#: Set inside the namespaces: the test body runs there.
INSIDE_ENV = "WARMSERVE_TEST_RAY_INSIDE"
NAMESPACES = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child"]
#: Node arguments of the tests' own Ray nodes: no log monitor, a Python process per node (about 1 s of a head's 3 s
#: start on 2 cores here) that only streams the workers' and raylets' logs to the driver's output, which no check reads.
NO_LOG_MONITOR = {"include_log_monitor": False}


def inside() -> bool:
    """Whether this process is the run inside the namespaces."""
    return bool(os.environ.get(INSIDE_ENV))


def cannot_run() -> str:
    """Why this machine cannot run a test inside the namespaces, or ""."""
    if importlib.util.find_spec("ray") is None:
        return "ray is not installed (pip install 'warmserve[ray]')"
    if os.geteuid() != 0:
        return "needs root: the Ray cluster runs in a private network namespace (unshare --net)"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare (util-linux) and ip (iproute2) for a private network namespace"
    probe = subprocess.run([*NAMESPACES, "ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot make private network and PID namespaces here: {probe.stderr.strip()[:200]}"
    return ""


#: Exceptions that escaped a thread of this run since ``watch_threads``: the thread's name and the traceback.
_escaped: list[str] = []


def watch_threads() -> None:
    """Note every exception that escapes a thread from now on, beside the hook pytest has installed (which fails the
    test, but only once the test function returns: ``passed`` would exit before that). Call it first in the body."""
    pytests_hook = threading.excepthook

    def hook(args):
        tb = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
        _escaped.append(f"thread {getattr(args.thread, 'name', '?')}: {tb}")
        pytests_hook(args)

    threading.excepthook = hook


def escaped() -> list[str]:
    """The exceptions that escaped a thread since ``watch_threads``, each with its thread's name and traceback."""
    return list(_escaped)


def passed() -> None:
    """End the run inside the namespaces as passed, at once: the caller has made every check. Ray's own cleanup and
    the interpreter's exit (Ray's exit hooks, its processes' shutdown) took 6 to 19 s a run here, and check nothing:
    when this process (PID 1 there) ends, the kernel ends every process in the namespaces, and ``run_inside`` removes
    Ray's directory. Only a passing run ends so: with an exception escaped from a thread (``watch_threads``) this
    returns, and the cleanup and pytest's report (which fails the test for it) run as usual."""
    if _escaped:
        return
    exit_inside(0)


def exit_inside(status: int) -> None:
    """End the run inside the namespaces with ``status`` at once (``passed``), removing first the lock folder the
    inner pytest made (conftest.py), which its unconfigure, skipped here, would remove: each Ray test left one in
    $TMPDIR."""
    shutil.rmtree(os.environ.get("WARMSERVE_TEST_LOCKS", ""), ignore_errors=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def require_namespaces() -> None:
    """Skip the test where the namespaces cannot be made (``cannot_run``)."""
    why = cannot_run()
    if why:
        pytest.skip(why)


def split_run(test_file: str, test_name: str, tmp_path, limit_s: float, body, models: tuple) -> str | None:
    """A Ray test's two halves: inside the namespaces ``body()`` runs, every thread's escaped exception watched, and
    None is returned; outside, the demo checkpoints of ``models`` are written (so that the timed run inside only
    reads them) and the test is run again inside (``run_inside``): its stdout is returned."""
    if inside():
        watch_threads()
        body()
        return None
    require_namespaces()
    import serving  # this folder's module: the demo checkpoints

    serving.demo_paths(models)
    return run_inside(test_file, test_name, tmp_path, limit_s)


def run_inside(test_file: str, test_name: str, tmp_path, limit_s: float, env: dict | None = None) -> str:
    """Run ``test_file::test_name`` again inside the namespaces (``require_namespaces`` first), killed with every
    process there after ``limit_s``; fails the test with the child's output unless it passed. Returns the child's
    stdout."""
    cmd = [*NAMESPACES, sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-s",
           f"{test_file}::{test_name}", "--basetemp", str(tmp_path / "inside")]
    # Ray's files (sessions, logs, sockets, the current cluster's address) in a directory of this run, not in
    # /tmp/ray where other Ray users on the machine look. Short: Ray's Unix socket paths must fit in 107 bytes.
    # $TMPDIR too: a run that passed ends at once (``passed``), its controllers unclosed, and left the folder of
    # their private worker socket (hub_sockets.private_bind) in /tmp, which no later start in this PID namespace
    # may sweep (its owner's pid is of the namespace that ended).
    ray_tmp = tempfile.mkdtemp(prefix="wsray")
    try:
        r = subprocess.run(cmd, env={**os.environ, INSIDE_ENV: "1", "RAY_TMPDIR": ray_tmp, "TMPDIR": ray_tmp,
                                     **(env or {})},
                           capture_output=True, text=True, timeout=limit_s, cwd=os.path.dirname(test_file))
    except subprocess.TimeoutExpired as e:  # unshare is killed, and with it every process in the namespaces
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"the run inside the namespaces passed {limit_s} s:\n{out[-6000:]}")
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert r.returncode == 0, f"inside the namespaces:\n{r.stdout[-8000:]}\n{r.stderr[-3000:]}"
    return r.stdout
