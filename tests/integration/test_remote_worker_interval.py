"""A remote worker's silence is judged against its own --heartbeat-interval-s too (``Hello.heartbeat_interval_s``).
Found in review: `warmserve worker --controller` at its default interval (1 s) under a controller whose
heartbeat_interval_s is 0.25 s and worker_timeout_s 0.5 s (accepted: twice) was declared lost while healthy, again
and again, and its requests failed with NoWorkersError; nothing said why."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys

import msgspec

import serving
from warmserve import protocol as P
from warmserve.config import ClusterConfig, ControllerConfig, ModelSpec
from warmserve.controller.workers import worker_silence_limit_s
from warmserve.controller.controller import Controller
from warmserve.controller.models import controller_model
from warmserve.policy.config import PolicyConfig

MODEL = "llama-20m"
GREEDY = P.SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)


def test_a_remote_worker_at_its_default_interval_is_not_lost_under_a_faster_controller(tmp_path, caplog):
    model = controller_model(ModelSpec(path=serving.demo_paths((MODEL,))[MODEL]))
    caplog.set_level(logging.WARNING, logger="warmserve.controller")
    asyncio.run(asyncio.wait_for(_idle_then_serve(model, tmp_path), 180))
    warned = [r.getMessage() for r in caplog.records if "--heartbeat-interval-s" in r.getMessage()]
    assert len(warned) == 1, warned  # once, at its admission
    assert "every 1 s" in warned[0] and "worker_timeout_s 0.5 s" in warned[0] and "after 2 s" in warned[0]


async def _idle_then_serve(model, tmp_path) -> None:
    cc = ControllerConfig(tick_s=0.1, heartbeat_interval_s=0.25, worker_timeout_s=0.5,
                          policy_config=PolicyConfig(window_s=30))
    c = Controller(ClusterConfig(models=(model.spec,), controller=cc), [model])
    ep = await c.start()
    with open(tmp_path / "worker.log", "w") as log:  # started as the docs say: its interval left at the default
        proc = subprocess.Popen([sys.executable, "-m", "warmserve", "worker", "--controller", ep, "--device", "cpu",
                                 "--memory-gib", "0.5", "--threads", "1"], stdout=log, stderr=log)
    try:
        await c.wait_for_workers(1, 120)
        (w,) = c.hub.workers.values()
        await asyncio.sleep(3.0)  # idle: a Stats push (or a Heartbeat) each second
        out = [t async for ids in c.submit_nowait(MODEL, [5, 17, 300], GREEDY) for t in ids]
        assert len(out) == GREEDY.max_tokens
        assert w.alive and c.hub.workers[w.ident] is w and c.metrics.workers_lost.get() == 0
    finally:
        await c.close(drain=False)
        proc.terminate()
        proc.wait(20)


def test_hello_decodes_across_versions_and_a_worker_that_says_no_interval_is_judged_as_before():
    class Hello(msgspec.Struct, tag=True, tag_field="msg", omit_defaults=True):  # a Hello from before the field
        worker_id: str
        device: str
        pid: int
        protocol_version: int = 0

    old = P.decode_reply(msgspec.msgpack.encode(Hello("w1", "cpu", 7, P.PROTOCOL_VERSION)))
    assert old.heartbeat_interval_s == 0.0 and old.protocol_version == P.PROTOCOL_VERSION
    new = P.encode(P.Hello(worker_id="w1", device="cpu", pid=7, heartbeat_interval_s=1.0,
                           protocol_version=P.PROTOCOL_VERSION))
    assert msgspec.msgpack.decode(new, type=Hello).pid == 7  # an older controller drops the field
    assert worker_silence_limit_s(0.5, 0.0) == 0.5 and worker_silence_limit_s(0.5, 0.2) == 0.5
    assert worker_silence_limit_s(0.5, 1.0) == 2.0 and worker_silence_limit_s(0.5, float("inf")) == 0.5
