"""A tp-2 instance over two in-process workers with a real gloo group: the set-up the worker tests of tensor
parallelism share. Importable from every test directory (tests/conftest.py puts this directory on sys.path)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor


def join_tp2(workers, group_timeout_s: float = 20.0) -> None:
    """Join ``workers`` as ranks 0 and 1 of group "g" (rank 0 hosts the store), a thread each; a failure on either
    thread is raised here."""
    port = workers[0].host_group_store()
    with ThreadPoolExecutor(2) as pool:
        for f in [pool.submit(w.join_group, "g", r, 2, port, group_timeout_s=group_timeout_s)
                  for r, w in enumerate(workers)]:
            f.result(60)


def start_tp2(workers, path: str, model: str, group_timeout_s: float = 20.0, dtype: str = "auto",
              **activate) -> None:
    """``join_tp2``, then prewarm each one's shard of ``model`` from ``path`` as ``dtype`` and activate both
    (``activate``: the worker's activate() keywords). The calls that meet in the group run on a thread each; a
    failure on either thread is raised here."""
    join_tp2(workers, group_timeout_s)
    for r, w in enumerate(workers):
        w.prewarm(path, model, dtype, tp=2, rank=r)
    with ThreadPoolExecutor(2) as pool:
        for f in [pool.submit(w.activate, model, group_id="g", **activate) for w in workers]:
            f.result(60)
