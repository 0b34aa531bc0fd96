"""The live side of `warmserve bench replay` (``warmserve.bench.replay``): a `warmserve serve` child per policy, and
the signals that must still stop it.

The child runs in a session of its own (a Ctrl-C at the terminal reaches the bench, which stops the child in
order, not both at once), so nothing but the bench's own clean-up (or its end: ``--exit-with-parent``, for a
SIGKILL, which runs none) ever stops it: ``exit_signals.exit_on_signals``
turns SIGTERM and SIGHUP into SystemExit, so that clean-up runs for them too (found in review: a SIGTERM to the
bench, from timeout(1) or a CI job's kill, left the serve child and its workers running, re-parented to init).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

from warmserve.bench.exit_signals import signals_held
from warmserve.bench.replay_setup import REPLAY_ZONE, fetch_prewarm_metrics
from warmserve.errors import TimeoutError_, WarmServeError

class LiveCluster:
    """`warmserve serve` in a child process with one policy; ``url`` once it printed its serving line."""

    def __init__(self, policy: str, served: list[tuple[str, str]], *, cpu_workers: int, history_path: str,
                 window_s: float, log_dir: str, start_timeout_s: float = 300.0, policy_options: dict | None = None):
        from warmserve.engine.demo import write_demo_models

        paths = write_demo_models(None, sorted({c for _, c in served}))
        # --exit-with-parent: found in review, a SIGKILLed bench (no clean-up runs) left this server and its workers
        # running, re-parented to init
        cmd = [sys.executable, "-m", "warmserve", "serve", "--port", "0", "--policy", policy, "--cpu-workers",
               str(cpu_workers), "--window-s", repr(window_s), "--log-dir", log_dir, "--log-level", "WARNING",
               "--load-timezone", REPLAY_ZONE, "--exit-with-parent", str(os.getpid())]
        for k, v in (policy_options or {}).items():
            cmd += ["--policy-option", f"{k}={v}"]
        if history_path:
            cmd += ["--history", history_path]
        for name, ckpt in served:
            cmd += ["--model", f"{paths[ckpt]}={name}"]
        os.makedirs(log_dir, exist_ok=True)
        self.log_path = os.path.join(log_dir, f"serve-{policy}.log")
        self._log = open(self.log_path, "w")
        with signals_held():
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                         start_new_session=True)
        try:
            self.url = self._wait_ready(start_timeout_s)
        except BaseException:
            # a signal (SystemExit) or Ctrl-C during the start: the caller never gets this object to close
            self.close()
            raise

    def _wait_ready(self, timeout_s: float) -> str:
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if not sel.select(timeout=1.0):
                continue
            line = self.proc.stdout.readline()
            if line.startswith("{") and '"serving"' in line:
                return json.loads(line)["serving"]
        exited = self.proc.poll() is not None
        self.close()
        if exited:
            raise WarmServeError(f"warmserve serve exited with code {self.proc.returncode} before it served: "
                                 f"{self.log_tail() or '(its log is empty)'} (log: {self.log_path})",
                                 exit_code=self.proc.returncode, log_path=self.log_path)
        raise TimeoutError_(f"warmserve serve did not come up within {timeout_s:.0f} s: stopped; see {self.log_path}",
                            timeout_s=timeout_s, log_path=self.log_path)

    def log_tail(self, lines: int = 3) -> str:
        """The last non-empty lines of the child's log (where its error is), joined with " | "."""
        try:
            with open(self.log_path, errors="replace") as f:
                text = [ln.strip() for ln in f.read()[-20000:].splitlines() if ln.strip()]
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def metrics(self) -> dict | None:
        return fetch_prewarm_metrics(self.url)

    def close(self, timeout_s: float = 90.0) -> None:
        """Stop the child (SIGTERM, then its whole group killed after ``timeout_s``, or at once where this wait is
        interrupted: a signal or Ctrl-C while it stops must not leave it running); again: nothing more."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self._kill()
                except BaseException:
                    self._kill()
                    raise
        finally:
            if self.proc.stdout:
                self.proc.stdout.close()
            self._log.close()

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # its group may have exited since
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
