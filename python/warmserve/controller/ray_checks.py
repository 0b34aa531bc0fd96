"""Checks the Ray launcher makes on the cluster itself, and its calls that must not wait for ever (used by
``ray_launch``)."""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable

from warmserve.controller.ray_plan import RayClusterError, RayNode

log = logging.getLogger("warmserve.controller")

#: How long close() waits for its Ray calls (killing actors, removing placement groups, disconnecting), seconds.
#: Found in review: with the Ray head (GCS) gone they never return, and Cluster.close() hung for ever.
CLOSE_RAY_S = 10.0
#: How long the check that every node has the model paths gets at most, seconds (it starts a Ray worker process
#: on each node).
PATH_CHECK_TIMEOUT_S = 60.0


def ray_error_line(e: BaseException) -> str:
    """One line of a Ray error that says why. Ray's ActorDiedError opens with one fixed sentence ("The actor died
    unexpectedly ...") and tab-indented fields, and gives the cause (its process died, its node died) after them:
    found in review, /stats' last_exit held that sentence alone, whatever had happened."""
    lines = str(e).strip().splitlines()
    if not lines:
        return type(e).__name__
    cause = next((ln for ln in lines[1:] if ln.strip() and not ln.startswith("\t")), None)
    return (cause if cause is not None and lines[0].startswith("The actor died unexpectedly") else lines[0])[:300]


def missing_checkpoints(paths: list[str]) -> list[str]:
    """Run on a node: the files of the checkpoints at ``paths`` missing there: config.json and the weights
    (model.safetensors, or model.safetensors.index.json and the shards it lists). Found in review: a node with
    config.json alone passed, and every start of the model failed on that node's worker, none tried elsewhere."""
    import json

    out = []
    for p in paths:
        out += [f for f in (os.path.join(p, "config.json"),) if not os.path.isfile(f)]
        index = os.path.join(p, "model.safetensors.index.json")
        if os.path.isfile(os.path.join(p, "model.safetensors")):
            continue
        if not os.path.isfile(index):
            out.append(os.path.join(p, "model.safetensors"))
            continue
        try:
            with open(index, encoding="utf-8") as f:  # JSON is UTF-8 (RFC 8259), whatever the locale
                shards = set(json.load(f)["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # unreadable: the worker's load says what is wrong with it
        out += [os.path.join(p, s) for s in sorted(shards) if not os.path.isfile(os.path.join(p, s))]
    return out


def check_model_paths(nodes: list[RayNode], paths: list[str], timeout_s: float) -> None:
    """Every node must have every checkpoint at the path the controller read it at, as the workers load it from
    there: checked by a zero-CPU task pinned to each node. Found in review: a node without them was never checked,
    and its worker failed to load on every attempt (three, all on that node), or a request waited out its whole
    timeout. A node that does not answer within ``timeout_s`` is left to the workers' start to judge."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(missing_checkpoints)
    refs = {task.options(num_cpus=0, max_retries=0,
                         scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False)).remote(paths): n
            for n in nodes}
    ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=min(timeout_s, PATH_CHECK_TIMEOUT_S))
    for ref in late:
        log.warning("Ray node %s (%s) did not answer the model path check within %.0f s", refs[ref].node_id[:8],
                    refs[ref].address, min(timeout_s, PATH_CHECK_TIMEOUT_S))
        ray.cancel(ref, force=True)
    lacking = {}
    for ref in ready:
        try:
            missing = ray.get(ref)
        except Exception as e:  # the node died meanwhile, or cannot run warmserve's code: the actor says more
            log.warning("the model path check on Ray node %s failed: %s", refs[ref].node_id[:8],
                        ray_error_line(e))
            continue
        if missing:
            lacking[refs[ref]] = missing
    if lacking:
        where = "; ".join(f"node {n.node_id[:8]} ({n.address}, {n.hostname}) lacks {', '.join(m)}"
                          for n, m in lacking.items())
        raise RayClusterError(
            f"the model checkpoints must exist at the same path on every Ray node, as the workers load them there: "
            f"{where}. Copy them there (or onto a file system every node mounts at that path), or remove the node "
            f"from the Ray cluster", nodes={n.node_id: m for n, m in lacking.items()})


def call_within(calls: list[tuple[str, Callable[[], object]]], timeout_s: float) -> list[str]:
    """Run ``calls`` in order on a daemon thread for at most ``timeout_s``; returns the names of those not done by
    then (the thread is left to them: a Ray call to a GCS that is gone may never return)."""
    done: list[str] = []

    def run():
        for name, call in calls:
            try:
                call()
            except Exception as e:  # the cluster may be going away under us
                log.debug("%s: %s", name, e)
            done.append(name)

    t = threading.Thread(target=run, name="warmserve-ray-close", daemon=True)
    t.start()
    t.join(timeout_s)
    return [name for name, _ in calls[len(done):]]
