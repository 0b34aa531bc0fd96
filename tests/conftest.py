"""The suite runs on pytest-xdist workers (README's test command: ``-n 3``); a test marked ``exclusive`` runs with
no other test beside it.

Why: the Ray tests start a two-node Ray cluster whose raylets must register within the test's budget, and on a
loaded 2-core machine they do not ("0 of 1 workers registered within 60 s"). Each test's whole run (setup, with
any module fixture it starts, call and teardown) holds a shared flock on one file, kept to the end of its module's
tests (whose fixtures live that long); an exclusive test holds it exclusively. A turnstile lock, taken before that
one and held by an exclusive test while it waits, keeps a stream of tests on the other workers from starving it
(writer preference). The main process makes the folder of the two lock files before it starts the workers (they
inherit its environment) and removes it at the end. Without xdist nothing is locked.

The exclusive tests are collected first, and an exclusive lock is kept from one exclusive module to the next: xdist's
worksteal scheduler hands each worker a contiguous share of the collection, so they all fall to one worker at the
start, and the others' running modules are drained once for all of them instead of once for each module."""

import fcntl
import os
import shutil
import subprocess
import tempfile

import pytest

LOCKS_ENV = "WARMSERVE_TEST_LOCKS"


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the main process (xdist's workers carry their input)
        config._warmserve_locks = os.environ[LOCKS_ENV] = tempfile.mkdtemp(prefix="warmserve-test-locks-")


def pytest_unconfigure(config):
    locks = getattr(config, "_warmserve_locks", None)
    if locks:
        shutil.rmtree(locks, ignore_errors=True)
        os.environ.pop(LOCKS_ENV, None)


#: The lock this xdist worker holds: (the open lock file, whether exclusive); kept across the tests of one module,
#: so that the fixtures of a module (a server and its workers, heartbeating) never run beside an exclusive test.
_held: tuple | None = None


def _exclusive(item) -> bool:
    return item.get_closest_marker("exclusive") is not None


def pytest_collection_modifyitems(items):
    # Every worker collects and must order alike (xdist aborts a run whose workers' collections differ): a stable
    # sort on the marker keeps each module's tests together and in their order.
    items.sort(key=lambda item: not _exclusive(item))


def _take(locks: str, exclusive: bool):
    machine = open(os.path.join(locks, "machine"), "a")
    with open(os.path.join(locks, "turnstile"), "a") as turnstile:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(machine, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except BaseException:
            machine.close()
            raise
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
    return machine


def _release() -> None:
    global _held
    if _held is not None:
        _held[0].close()  # closing the file drops its flock
        _held = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    global _held
    locks = os.environ.get(LOCKS_ENV)
    # Only on xdist's workers: a pytest started by a test (the Ray tests re-run themselves in namespaces) inherits
    # the environment, and would wait for ever on the lock its parent holds.
    if not hasattr(item.config, "workerinput") or not locks:
        yield
        return
    exclusive = _exclusive(item)
    if _held is not None and _held[1] != exclusive:
        _release()
    if _held is None:
        _held = (_take(locks, exclusive), exclusive)
    try:
        yield
    finally:
        # the module's fixtures are torn down within its last test's run (teardown knows nextitem): held till then;
        # an exclusive lock is kept into the next exclusive module, since nothing can run beside either
        if (nextitem is None or _exclusive(nextitem) != exclusive
                or (not exclusive and getattr(nextitem, "module", None) is not getattr(item, "module", None))):
            _release()


# --- a real small file system, for the tests of a full or read-only disk ------------------------------------------

@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 1 MiB tmpfs mounted on a folder of tmp_path, unmounted after; skipped where this process may not mount
    one (not root, or mount refused)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where = tmp_path / "disk"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def full_tmpfs(tiny_tmpfs):
    """``tiny_tmpfs`` with a folder ``dir`` made, then no block left free (a file ``filler`` takes them all)."""
    (tiny_tmpfs / "dir").mkdir()
    fd = os.open(tiny_tmpfs / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 65536):
            pass
    except OSError:  # ENOSPC: full
        pass
    finally:
        os.close(fd)
    return tiny_tmpfs


@pytest.fixture
def saved_figures(monkeypatch):
    """Each Figure a plot of the package saves (``outputs.save_figure``, as the bench plots and ``sim.plot`` call
    it), laid out (drawn) for the extents of its parts, in order; nothing is written."""
    import warmserve.outputs
    import warmserve.sim.plot

    figs = []

    def keep(fig, path, **kw):
        fig.canvas.draw()
        figs.append(fig)

    monkeypatch.setattr(warmserve.outputs, "save_figure", keep)
    monkeypatch.setattr(warmserve.sim.plot, "save_figure", keep)
    return figs
