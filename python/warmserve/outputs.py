"""Output paths of the long-running commands (`calibrate`, `simulate`, `bench ...`), checked before the run.

Each of them measures or simulates for minutes and writes its files at the end, so a path it cannot write (a file
where a folder should be, a folder where the file should be, no permission, a read-only file system) or a plot it
cannot draw (matplotlib missing) must be refused before the work starts, not found after it. The checks create
the output's folder, as writing it would have.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import secrets
import stat
import tempfile

from warmserve.errors import FolderInUseError, InvalidArgumentError
from warmserve.extras import MissingExtraError, require


class PlotUnavailableError(InvalidArgumentError, MissingExtraError):
    """A plot was asked for but matplotlib is not installed. An InvalidArgumentError, so the command line says it in
    one line; a MissingExtraError, so callers that catch those still do. Fields: flag, path, module, extra."""


def _refuse(flag: str, path: str, why: str, fix: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"{flag} {path}: {why}; {fix}", flag=flag, path=path)


def _refuse_empty(flag: str, path: str) -> None:
    """Found in review: '' (an unset variable in --out "$OUT") passed as no output, so a run wrote nothing, exit 0,
    or failed after its work (`calibrate --out ''`: IsADirectoryError)."""
    if not os.fspath(path):
        raise InvalidArgumentError(f"{flag} '': names no path (an unset variable?); give one", flag=flag, path=path)


#: The topmost folder each check made, so that a command refused after its checks can take back those still
#: empty (``remove_made_folders``): found in review, a run refused over another argument left the empty folder
#: tree of its --json or --out behind.
_made_folders: list[str] = []


def _make_folder(flag: str, path: str, folder: str) -> None:
    """``folder`` made (with its parents) and writable, or InvalidArgumentError naming ``flag`` and ``path``."""
    probe, top = folder, None
    while not os.path.exists(probe):  # the nearest part of the path that exists decides what went wrong
        probe, top = os.path.dirname(probe), probe
    if not os.path.isdir(probe):
        raise _refuse(flag, path, f"{probe} is a file, not a folder", "choose a path under a folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise _refuse(flag, path, f"cannot create the folder {folder} ({e.strerror})",
                      "choose a folder you can write") from None
    if top is not None:
        _made_folders.append(top)
    # a real file, not os.access: root passes access() on a read-only file system, and ACLs can say no
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".warmserve-write-check-")
    except OSError as e:
        raise _refuse(flag, path, f"cannot write in {folder} ({e.strerror})", "choose a folder you can write") from None
    try:
        # a byte, not an empty file, which takes no block: found in review, a full disk passed the check, and the
        # run failed at its end, writing its results
        os.write(fd, b"w")
    except OSError as e:
        raise _refuse(flag, path, f"cannot write in {folder} ({e.strerror})",
                      "free space there or choose another folder") from None
    finally:
        os.close(fd)
        os.unlink(tmp)


def remove_made_folders() -> None:
    """Remove the folders the checks made (``_made_folders``) that are still empty, their empty subfolders first:
    for a command that ends refused or failed. A folder holding anything stays, whatever wrote it."""
    while _made_folders:
        top = _made_folders.pop()
        for folder, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
            try:
                os.rmdir(folder)
            except OSError:  # not empty (or gone): kept
                pass


def check_output(flag: str, path: str | None, example: str = "out.json") -> None:
    """Before a run that writes ``path`` at its end: its folder exists (made here) and a file can be written in it,
    and ``path`` is not a folder (the fix names ``example`` in it). None: nothing to check ('' is refused).
    InvalidArgumentError naming ``flag`` and ``path``."""
    if path is None:
        return
    _refuse_empty(flag, path)
    if path == "-":
        # found in review: "-", the usual name of the standard output, wrote a file named "-" in the current folder
        raise _refuse(flag, path, "names a file called '-' here, not the standard output",
                      "give /dev/stdout to write to the standard output, or ./- for that file")
    full = os.path.abspath(path)
    if os.path.isdir(full):
        raise _refuse(flag, path, "is a folder", f"give a file path, e.g. {os.path.join(path, example)}")
    if is_special(full):
        # a pipe or device is written where it is (write_json_atomic): no file is made beside it (found in review:
        # `--json >(jq .)` was refused, /dev/fd holding no files, and /dev/stdout checked /dev)
        if stat.S_ISSOCK(os.stat(full).st_mode):  # open() of a socket fails (ENXIO): say so now, not after the run
            raise _refuse(flag, path, "is a socket, which cannot be opened as a file", "give a file, pipe or device")
        if not os.access(full, os.W_OK):
            raise _refuse(flag, path, "cannot be written", "choose another path or fix its mode")
        return
    _make_folder(flag, path, os.path.dirname(full))
    if os.path.exists(full) and not os.access(full, os.W_OK):
        raise _refuse(flag, path, "the file exists and is not writable", "choose another path or fix its mode")


def check_output_folder(flag: str, path: str | None) -> None:
    """Like check_output for an output folder (logs): made here, and writable."""
    if path is None:
        return
    _refuse_empty(flag, path)
    full = os.path.abspath(path)
    if os.path.exists(full) and not os.path.isdir(full):
        raise _refuse(flag, path, "is a file, not a folder", "give a folder")
    _make_folder(flag, path, full)


class FolderLock:
    """An exclusive flock on ``lock_path``, a file in an output folder, held until ``release`` or the process's end
    (the kernel drops it then, so a killed run's leftover file blocks nobody: only the flock counts, never the
    file)."""

    def __init__(self, lock_path: str, fd: int):
        self.lock_path, self._fd = lock_path, fd

    def release(self) -> None:
        """The file removed, then the flock dropped; again: nothing more. Removed while still locked: a process
        that opened it just before then flocks a file no longer in the folder, which ``hold_folder`` sees and
        retries on the path's new file."""
        if self._fd is None:
            return
        try:
            os.unlink(self.lock_path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None


def flock_holder(fd: int) -> int | None:
    """The pid holding the flock of the file open as ``fd``, from /proc/locks (None where it does not say: another
    pid namespace's holder reads as pid 0 or not at all)."""
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == inode and parts[4].isdigit():
                    return int(parts[4]) or None
    except OSError:
        pass
    return None


class LockHeld(Exception):
    """Another process holds the flock ``flock_exclusive`` asked for; ``pid``: its pid (None: unknown)."""

    def __init__(self, pid: int | None):
        super().__init__(pid)
        self.pid = pid


def flock_exclusive(lock_path: str) -> int | None:
    """The descriptor of ``lock_path`` (made if absent, never through a link) under an exclusive flock of this
    process, with this pid written in it; LockHeld where another process holds it; None where no lock can be made (a
    file system without flock, a folder that cannot be written): the caller goes on unlocked, as before locks."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        # /proc/locks first: the file still holds a killed holder's pid until its new holder writes its own
        pid = flock_holder(fd) or _pid_in(fd)
        os.close(fd)
        raise LockHeld(pid) from None
    except OSError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def hold_folder(flag: str, folder: str, lock_name: str, where: str, holder: str, clash: str,
                fix: str) -> FolderLock | None:
    """This process's exclusive hold on the output ``folder`` (made and checked writable: ``check_output_folder``),
    an flock on ``folder/lock_name`` that holds this pid; FolderInUseError where another process holds it, in
    the words ``where`` (the folder, as the user set it), ``holder`` (what holds it), ``clash`` (what a second run
    would break) and ``fix`` (how to run beside it), with ", or wait for that run (pid N) to end" after the fix. None
    where no lock can be made (a file system without flock): the run goes on as it did before there was one."""
    lock_path = os.path.join(os.path.abspath(folder), lock_name)
    while True:
        try:
            fd = flock_exclusive(lock_path)
        except LockHeld as e:
            who = f"pid {e.pid}" if e.pid else "pid unknown"
            raise FolderInUseError(
                f"{where}: {holder} ({who}) holds it (lock file {lock_path}) and {clash}. Fix: {fix}, or wait for "
                f"that run ({who}) to end", flag=flag, path=folder, lock_path=lock_path, holder_pid=e.pid) from None
        if fd is None:
            return None
        try:
            current = os.path.samestat(os.fstat(fd), os.stat(lock_path))
        except OSError:
            current = False
        if current:
            return FolderLock(lock_path, fd)
        os.close(fd)  # its holder removed it as it ended (FolderLock.release) between the open and the flock


def _pid_in(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def check_plot(flag: str, path: str | None, what: str | None = None) -> None:
    """check_output for a plot, and matplotlib importable and able to write ``path``'s format (by its extension).
    ``what`` names the plot in the message when the option's own path is not the plot's (`bench engine --json`
    draws a PNG beside the JSON)."""
    if path is None:
        return
    check_output(flag, path, "plot.png")
    asked = f"{flag} {what or path}"
    try:
        require("matplotlib", asked)
    except MissingExtraError as e:
        raise PlotUnavailableError(str(e), flag=flag, path=path, module=e.module, extra=e.extra) from None
    from matplotlib.backend_bases import FigureCanvasBase

    ext = os.path.splitext(path)[1].lstrip(".").lower()
    formats = FigureCanvasBase.get_supported_filetypes()
    if ext and ext not in formats:
        raise _refuse(flag, path, f"matplotlib cannot write .{ext} files",
                      f"end the name with one of {', '.join('.' + f for f in sorted(formats))}")


def is_special(path: str) -> bool:
    """``path`` (its links followed) exists and is no regular file or folder: a FIFO, a character or block device,
    a socket (/dev/stdout, /dev/null, bash's ``>(cmd)``)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:  # two names of one file: a hard link, a bind mount
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def check_distinct_outputs(json_path: str | None, plot_path: str | None, *, plot_flag: str = "--plot",
                           derived: tuple[str, str] | None = None) -> None:
    """The results (--json) and the plot are two files, before the run. Found in review: `bench engine --json
    eng.png` drew its plot (at the --json path with .png) over the results, and `bench switch/replay/forecast/
    overhead --json P --plot P` the same, each printing "wrote" and exiting 0; `warmserve simulate` takes it too.
    ``derived``: (how the plot's path
    came from --json, the fix) where no --plot was given. InvalidArgumentError naming both flags."""
    if not json_path or not plot_path or not _same_file(json_path, plot_path):
        return
    if derived:
        raise InvalidArgumentError(f"--json {json_path}: the plot, drawn at {plot_path} ({derived[0]}), is the --json "
                                   f"file itself, so the plot would overwrite the results; {derived[1]}",
                                   flag="--json", flags=["--json"], path=json_path)
    raise InvalidArgumentError(f"--json {json_path} {plot_flag} {plot_path}: both name one file, so the plot would "
                               f"overwrite the results: give two paths", flag=plot_flag, flags=["--json", plot_flag],
                               path=json_path)


def check_outputs_spare_input(in_flag: str, in_path: str | None, outputs: dict[str, str | None],
                              what: str = "the input the run reads") -> None:
    """No output (``outputs``: flag -> path) names the input file ``in_path``, before the run. Found in review:
    `warmserve simulate --profile P --json P` replaced the cost profile it had read with its results (exit 0), and
    the next run with that profile failed on its schema. InvalidArgumentError naming both flags."""
    if not in_path or is_special(in_path):  # a pipe or device read is no file an output could replace
        return
    for flag, path in outputs.items():
        if path and _same_file(in_path, path):
            raise InvalidArgumentError(f"{in_flag} {in_path} {flag} {path}: both name one file, so the output would "
                                       f"overwrite {what}: give {flag} another path", flag=flag,
                                       flags=[in_flag, flag], path=path)


def check_at_least(flag: str, value, least=1) -> None:
    """A count the run divides by or takes a median over: at least ``least``, before the run starts."""
    if value is not None and value < least:
        raise InvalidArgumentError(f"{flag} {value}: must be at least {least}", flag=flag, value=value)


def parse_numbers(text, flag: str, *, positive: bool = False, example: str = "") -> list[float]:
    """A flag's comma-separated numbers, each finite (and > 0 with ``positive``), or InvalidArgumentError naming
    the flag (found in review: NaN or a size of -1 GiB ran, and failed or printed nonsense rows later)."""
    eg = f", e.g. {example}" if example else ""
    try:
        values = [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise InvalidArgumentError(f"{flag} {text!r}: expected comma-separated numbers{eg}", flag=flag) from None
    bad = [x for x in values if not math.isfinite(x) or (positive and x <= 0)]
    if bad:
        raise InvalidArgumentError(f"{flag} {text}: {', '.join(f'{x:g}' for x in bad)}: not a finite number"
                                   f"{' > 0' if positive else ''}{eg}", flag=flag, value=bad)
    return values


def write_json_atomic(path: str, obj, **dump_kwargs) -> None:
    """``json.dump(obj, f, **dump_kwargs)`` into ``path`` all at once (``write_atomic``). Found in review: an
    interrupt during a plain ``open(path, "w")`` write left a truncated, invalid JSON where the previous results
    were (``bench replay --reuse-live X.json --json X.json`` lost a 15-minute live run that way)."""
    def dump(f):
        json.dump(obj, f, **dump_kwargs)

    try:
        write_atomic(path, dump, binary=False)
    except OSError as e:
        # Found in review: a disk that filled during a run lost its results (minutes of work) at the last step,
        # with an OSError naming no path. They are kept in the temporary folder, if it can take them, and the
        # error says where. A file made now under a name no one could know (mkstemp: O_EXCL, mode 0600): found in
        # review, a name of the shared temporary folder known in advance (the pid's) let another user plant a link
        # there, and the results were written over the file it named, any file this user can write.
        kept = None
        try:
            fd, kept = tempfile.mkstemp(prefix=f"warmserve-{os.getpid()}-", suffix=f"-{os.path.basename(path)}")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                dump(f)
        except OSError:
            if kept is not None:
                try:
                    os.unlink(kept)
                except OSError:
                    pass
            kept = None
        raise _unwritten(path, e, kept) from None


def free_space_words(path: str) -> str:
    """", N MiB free there": the space this user may still write on the file system of ``path`` (its nearest folder
    that exists), for an error about a write that failed; "" where it cannot be read."""
    probe = os.path.abspath(path)
    while not os.path.isdir(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        st = os.statvfs(probe)
    except OSError:
        return ""
    return f", {st.f_bavail * st.f_frsize / 2**20:.1f} MiB free there"


def _unwritten(path: str, e: OSError, kept: str | None) -> InvalidArgumentError:
    """The error of results that could not be written to ``path``, naming where they were ``kept`` instead."""
    free = free_space_words(path)
    where = f"the results are kept in {kept}" if kept else "the results could not be kept anywhere"
    return InvalidArgumentError(f"cannot write {path} ({e.strerror or e}{free}): {where}. Fix: free space there or "
                                "make it writable, or give another path", path=path, kept=kept or "")


def save_figure(fig, path: str, **savefig_kwargs) -> None:
    """``fig.savefig(path, **savefig_kwargs)`` all at once (``write_atomic``; found in review: a plain savefig cut
    short left a truncated PNG). As savefig: the format is ``path``'s extension, and a path without one gets
    matplotlib's default format's (``out`` -> ``out.png``)."""
    import matplotlib

    fmt = os.path.splitext(path)[1].lstrip(".").lower()
    if not fmt:
        fmt = matplotlib.rcParams["savefig.format"]
        path = f"{path}.{fmt}"
    write_atomic(path, lambda f: fig.savefig(f, format=fmt, **savefig_kwargs), binary=True)


def write_atomic(path: str, write, binary: bool) -> None:
    """``write(f)`` into ``path`` all at once: to a temporary file in the same folder, flushed to disk, then renamed
    onto ``path``. A reader sees the old file or the new one, never half of one; on any failure the temporary file
    is removed and ``path`` is as it was. A link's target is written, and the result keeps the mode an earlier
    file had.

    A ``path`` that exists and is no regular file (a pipe, a device, a socket) is written where it is. Found in
    review: the rename replaced a device node (a copy of /dev/null) with a plain file, and `--json /dev/stdout |
    jq` failed after the whole run (FileNotFoundError: a temporary file in /proc/PID/fd).

    Text is written in UTF-8, the encoding every reader of these files takes (``read_history``, JSON), whatever the
    locale. Found in the locale review: written in the locale's, a history record under a Latin-1 locale was refused
    at the next start ("not UTF-8 text"), and one with a model name the locale cannot encode was never written."""
    mode, encoding = ("wb", None) if binary else ("w", "utf-8")
    if is_special(path):
        with open(path, mode, encoding=encoding) as f:
            write(f)
        return
    path = os.path.realpath(path)  # a --json that is a symbolic link: its target is written, as open(path, "w") did
    folder = os.path.dirname(path)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # made as open(path, "w") makes a file (0666 less the umask), not 0600 as mkstemp would
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(path):  # the result keeps the mode the old file had
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt too: no temporary file is left behind
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


__all__ = ["PlotUnavailableError", "parse_numbers", "write_json_atomic", "save_figure", "write_atomic", "check_output",
           "check_output_folder", "check_plot", "check_at_least", "check_distinct_outputs", "check_outputs_spare_input",
           "is_special", "free_space_words", "FolderLock", "hold_folder", "flock_holder",
           "flock_exclusive", "LockHeld"]
