"""The `warmserve` command line.

Each command lives in the module that owns its concern; this file only maps command words to modules, so that
nothing depends on the CLI and `warmserve --help` imports no heavy library. A command module provides
``add_arguments(parser)`` and ``main(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

# command words -> (module, one-line help)
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("serve",): ("warmserve.controller.serve", "serve models over an OpenAI-compatible HTTP API"),
    ("worker",): ("warmserve.worker.main", "run one device worker (joins a controller)"),
    ("models", "demo"): ("warmserve.engine.demo", "write the random-weight demo checkpoints"),
    ("simulate",): ("warmserve.sim.cli", "simulate a cluster under a workload, per policy"),
    ("calibrate",): ("warmserve.bench.calibrate", "measure the CPU workers and write their profile for bench replay"),
    ("bench", "switch"): ("warmserve.bench.switch", "memory switching: activation vs cold load, move vs memcpy"),
    ("bench", "engine"): ("warmserve.bench.engine", "engine throughput vs transformers, TTFT warm vs cold"),
    ("bench", "forecast"): ("warmserve.bench.forecast", "forecast error per model and method on ServeGen"),
    ("bench", "placement"): ("warmserve.bench.placement", "planning time and prewarm survival, laminar vs round-robin"),
    ("bench", "overhead"): ("warmserve.bench.overhead", "per-request overhead the controller adds"),
    ("bench", "replay"): ("warmserve.bench.replay", "replay a trace against a live cluster, per policy"),
    ("bench", "tp"): ("warmserve.bench.tp", "tensor-parallel start: communicator prewarmed vs built on demand"),
}


def _usage() -> str:
    lines = ["usage: warmserve COMMAND [options]", "", "commands:"]
    for words, (_, help_) in COMMANDS.items():
        lines.append(f"  {' '.join(words):<18} {help_}")
    lines.append("")
    lines.append("`warmserve COMMAND --help` shows a command's options; `warmserve --version` the version.")
    return "\n".join(lines)


def _group_usage(group: str) -> str:
    lines = [f"usage: warmserve {group} SUBCOMMAND [options]", "", "subcommands:"]
    for words, (_, help_) in COMMANDS.items():
        if words[0] == group and len(words) > 1:
            lines.append(f"  {' '.join(words[1:]):<18} {help_}")
    lines.append("")
    lines.append(f"`warmserve {group} SUBCOMMAND --help` shows a subcommand's options.")
    return "\n".join(lines)


#: First words of commands that take a second word (``warmserve bench switch``): alone, they list their commands.
GROUPS = sorted({words[0] for words in COMMANDS if len(words) > 1})


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for n in (2, 1):
        words = tuple(argv[:n])
        if words in COMMANDS:
            module_name, help_ = COMMANDS[words]
            break
    else:
        # Help asked for is printed and exits 0; a missing command is a usage error, exit 2 with the list on stderr,
        # as argparse does for a required subcommand (found in review: `warmserve models` exited 0, so a script
        # that lost its subcommand went on as if it had run)
        if argv and argv[0] in ("-V", "--version"):
            print(f"warmserve {_version()}")
            return 0
        if argv and argv[0] in GROUPS:
            rest = argv[1:]
            if rest and rest[0] in ("-h", "--help"):
                print(_group_usage(argv[0]))
                return 0
            what = f"unknown command {' '.join(argv[:2])!r}" if rest else f"{argv[0]!r} needs a subcommand"
            print(f"warmserve: {what}\n", file=sys.stderr)
            print(_group_usage(argv[0]), file=sys.stderr)
            return 2
        if argv and argv[0] in ("-h", "--help"):
            print(_usage())
            return 0
        what = f"unknown command {' '.join(argv[:2])!r}" if argv else "no command given"
        print(f"warmserve: {what}\n", file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return 2
    command = f"warmserve {' '.join(words)}"
    # Found in review: a Ctrl-C ended any command but `simulate` in a traceback. Caught here, outermost (the import
    # of a heavy module too), so each command's own clean-up (the finally clauses that stop its servers and
    # children, save what finished) has run by then.
    try:
        return _run(command, module_name, help_, argv[len(words):])
    except KeyboardInterrupt:
        if words not in REPORTS_OWN_INTERRUPT:
            print(f"{command}: interrupted", file=sys.stderr)
        return 130  # the shell's status for SIGINT (128 + 2), as `simulate` returns


def exit_process(status: int | None) -> NoReturn:
    """End this process with ``status`` as Python's own exit does, less its last step: the threads not daemonic are
    joined and the atexit handlers run (log handlers flushed, weakref finalizers: temp dirs removed), stdout and
    stderr are flushed, and ``os._exit`` then skips the interpreter's teardown. In a process that imported torch that
    teardown took 0.6 to 0.9 s (2-core VM, 2026-12-06), at every worker's exit: each ``Cluster.close``, drain and
    worker restart waited for it. Only for a process's top level (``python -m warmserve``, the ``warmserve`` script,
    the fork server's children), never in-process."""
    import atexit
    import os
    import threading

    status = int(status or 0)
    shutdown = getattr(threading, "_shutdown", None)  # what Python's own exit does first (private, hence getattr)
    if shutdown is not None and threading.current_thread() is threading.main_thread():
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed pipe (`warmserve ... | head`): Python's exit then says 120
            status = 120
    os._exit(status)


def run() -> NoReturn:
    """The `warmserve` script and ``python -m warmserve``: ``main``, then ``exit_process``. A reader gone from
    stdout (`warmserve --help | head -1`) ends it with 120, as a failed flush does, and no traceback: found in
    review, with unbuffered output (PYTHONUNBUFFERED) the write itself raised, in ``main``, and printed one."""
    try:
        status = main()
    except BrokenPipeError:
        import os

        # the stream still holds what it could not write: pointed at /dev/null, its flush at exit cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 120
    exit_process(status)


def _version() -> str:
    """The installed package's version (its metadata; "unknown" when run from a tree that was never installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("warmserve")
    except PackageNotFoundError:
        return "unknown"


#: Commands that print their own "interrupted" line (what --json holds) and then let the KeyboardInterrupt go on,
#: so that in-process callers still see it: main adds no second line for them.
REPORTS_OWN_INTERRUPT = {("bench", "replay")}


def _run(command: str, module_name: str, help_: str, rest: list[str]) -> int:
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=command, description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    from warmserve.errors import InvalidArgumentError, WarmServeError, exit_status
    from warmserve.outputs import remove_made_folders

    status = 1
    try:
        status = int(module.main(args) or 0)
        return status
    except InvalidArgumentError as e:  # the caller's mistake: its message names the fix, a traceback adds nothing
        print(f"{command}: {e}", file=sys.stderr)
        status = 2
        return status
    # Found in review: an unknown demo model, an --out that cannot be written or an unreadable key file ended in a
    # traceback. Errors raised on purpose, and a file or value the command line named, read as one line; one the
    # caller must fix (a value, a name: an HTTP 4xx) exits 2, one met while running exits 1.
    except (WarmServeError, OSError, ValueError) as e:
        print(f"{command}: {type(e).__name__}: {e}", file=sys.stderr)
        status = exit_status(e)
        return status
    finally:
        if status:  # refused or failed (an exception too): the output folders its checks made, left empty, go
            remove_made_folders()


if __name__ == "__main__":
    sys.exit(main())
