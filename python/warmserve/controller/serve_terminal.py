"""`warmserve serve` and the terminal it was started from: the signals that stop it, the lines it says there, and
its parent's exit (--exit-with-parent).

Found in review: with its stderr gone (the terminal closed, the ssh session dropped, `serve 2>&1 | head`), the
"shutting down" line raised BrokenPipeError (EIO on a hung-up terminal) before the drain began, so a SIGTERM ended
the server at once with exit 1, its requests in flight cut off unanswered; and SIGHUP, the terminal closing, killed
it on the spot (the default action), the same. Now SIGHUP stops it as SIGTERM does (a drain), unless it was started
ignoring SIGHUP (`nohup`), and a line that cannot be written is dropped, as the logging module drops its own.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
import time

#: How often --exit-with-parent checks the parent, seconds.
PARENT_POLL_S = 0.5


def stop_signals() -> tuple[int, ...]:
    """The signals whose first drains the server and whose second ends the drain: SIGINT (Ctrl-C), SIGTERM (a
    service manager's stop), and SIGHUP (its terminal closed) unless this process was started ignoring it: `nohup`
    sets SIG_IGN so that the server outlives the terminal, and a handler here would undo that."""
    sigs = [signal.SIGINT, signal.SIGTERM]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        sigs.append(signal.SIGHUP)
    return tuple(sigs)


def say(what: str) -> None:
    """A start-up or stop progress line for the person who ran `warmserve serve` (stderr: stdout is the JSON line)."""
    write_line(f"warmserve serve: {what}", sys.stderr)


def write_line(line: str, stream) -> None:
    """``line`` to ``stream``, or nowhere when the stream cannot take it."""
    try:
        print(line, file=stream, flush=True)
    except ValueError:  # closed in this process
        pass
    except OSError as e:
        if e.errno in GONE_ERRNOS:
            to_devnull(stream)


#: A reader that is gone for good: a closed pipe (EPIPE), a hung-up terminal (EIO).
GONE_ERRNOS = (errno.EPIPE, errno.EIO)


def to_devnull(stream) -> None:
    """Point ``stream``'s descriptor at /dev/null, its unwritten bytes flushed there: the buffered writer keeps what
    a failed write left, and the exit's flush failed on it again, exit status 120 after a clean drain. The logging
    module's handlers on the stream stop failing too."""
    try:
        fd = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError, AttributeError):
        return
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)
    try:
        stream.flush()
    except (OSError, ValueError):
        pass


def watch_parent(pid: int) -> bool:
    """SIGTERM this process (its graceful stop) once process ``pid``, its parent, has exited; False when it is not
    the parent now (gone already). Found in review: a bench that runs `serve` as its child, in a session of its own,
    killed with SIGKILL left the server, its fork server and workers running for good, re-parented to init."""
    if os.getppid() != pid:
        return False

    def wait() -> None:
        # The parent's pid, not a pidfd: once it is gone this process is re-parented, and no reused pid can fool it.
        while os.getppid() == pid:
            time.sleep(PARENT_POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait, name="warmserve-exit-with-parent", daemon=True).start()
    return True
