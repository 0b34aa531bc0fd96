"""A script that ends with its `Cluster` never closed: the cluster's finalizer closes it at exit, quietly, and its
worker processes are stopped. Found in review: the close ran after the interpreter's threads had shut down, so the
reaping of the workers (on an executor thread) failed with "can't register atexit after shutdown", a traceback
was printed, and the workers went only because they watch their parent."""

import os
import subprocess
import sys
import textwrap
import time

import serving

MODEL = "llama-20m"

SCRIPT = textwrap.dedent("""
    import os, sys
    import warmserve
    c = warmserve.Cluster([sys.argv[1]], cpu_workers=1, cpu_worker_memory_bytes=512 << 20, start_timeout_s=120)
    print(c.generate("llama-20m", "Hi", max_tokens=3, temperature=0).completion_tokens, flush=True)
    print(" ".join(str(p) for p in sorted(int(d) for d in os.listdir("/proc") if d.isdigit()
                                          and open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1]
                                          == str(os.getpid()))), flush=True)
""")


def test_a_cluster_never_closed_is_closed_quietly_at_exit_with_its_workers(tmp_path):
    path = serving.demo_paths((MODEL,))[MODEL]
    script = tmp_path / "unclosed.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script), path], capture_output=True, text=True, timeout=240,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = out.stdout.split("\n")
    assert out.returncode == 0, out.stderr[-3000:]
    assert lines[0] == "3", out.stdout
    workers = [int(p) for p in lines[1].split()]
    assert workers, "the cluster started no worker process"
    assert "Traceback" not in out.stderr and "failed" not in out.stderr, out.stderr[-3000:]
    end = time.monotonic() + 10
    while any(serving.pid_alive(p) for p in workers) and time.monotonic() < end:
        time.sleep(0.1)
    assert not any(serving.pid_alive(p) for p in workers)
