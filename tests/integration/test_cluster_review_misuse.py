"""A user's ordinary mistakes with a `warmserve.Cluster`: here, forking a process that holds a started one (a
multiprocessing fork start method, a pre-forking server, a bare os.fork()).

Found in review: a forked child that exited normally, without touching the cluster, ran the parent's cluster
finalizers at its exit: the worker hub's removed the parent's ipc:// socket file (workers could no longer join the
parent), and the cluster's raised "RuntimeError: Cannot close a running event loop", which turned a child's
sys.exit(0) inside the script's `with` block into exit status 1 with a traceback. A child that used the cluster was
told it was closed, though it runs on in the parent."""

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import serving

MODEL = "llama-20m"

SCRIPT = textwrap.dedent("""
    import os, sys
    import warmserve
    from warmserve.errors import ClosedError
    sock = sys.argv[2]
    with warmserve.Cluster([sys.argv[1]], cpu_workers=1, cpu_worker_memory_bytes=512 << 20,
                           bind="ipc://" + sock) as c:
        print("parent", c.generate("llama-20m", "Hi", max_tokens=3, temperature=0).completion_tokens, flush=True)
        for use in (False, True):
            pid = os.fork()
            if pid == 0:
                if use:
                    try:
                        c.generate("llama-20m", "Hi", max_tokens=3)
                    except ClosedError as e:
                        print("child told:", e, flush=True)
                sys.exit(0)  # through the with block's exit and the interpreter's atexit hooks, as a script ends
            _, status = os.waitpid(pid, 0)
            print("child", os.waitstatus_to_exitcode(status), "socket", os.path.exists(sock), flush=True)
        print("parent", c.generate("llama-20m", "Hi", max_tokens=3, temperature=0).completion_tokens, flush=True)
""")


def test_a_forked_child_leaves_its_parents_cluster_alone():
    path = serving.demo_paths((MODEL,))[MODEL]
    short = tempfile.mkdtemp(prefix="ws-fork-")  # an ipc:// path must fit in 107 bytes: not under pytest's tmp_path
    try:
        script = os.path.join(short, "fork.py")
        with open(script, "w") as f:
            f.write(SCRIPT)
        out = subprocess.run([sys.executable, script, path, os.path.join(short, "c.sock")], capture_output=True,
                             text=True, timeout=120, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    finally:
        shutil.rmtree(short, ignore_errors=True)
    lines = out.stdout.splitlines()
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    told = [ln for ln in lines if ln.startswith("child told:")]
    assert len(told) == 1 and "fork" in told[0], out.stdout
    assert [ln for ln in lines if not ln.startswith("child told:")] == \
        ["parent 3", "child 0 socket True", "child 0 socket True", "parent 3"], out.stdout + out.stderr[-3000:]
