"""A worker's Stats report each instance's measured decode step (``WorkerInstance.decode_step_s``,
``decode_batch``, ``decode_steps``: the engine's, for co-serving's TPOT rule in the controller's policy); Stats from
a worker before these fields decode with them at 0."""

from __future__ import annotations

import msgspec

from warmserve import protocol as P


def test_stats_report_the_instances_measured_decode_step(worker, tiny_models):
    worker.prewarm(tiny_models["tiny-llama"])
    worker.activate("tiny-llama")
    (before,) = worker.stats().instances
    assert (before.decode_step_s, before.decode_batch, before.decode_steps) == (0.0, 0.0, 0)
    ids, _ = worker.generate("tiny-llama", [1, 2, 3, 4], P.SamplingParams(max_tokens=8, ignore_eos=True)).collect()
    assert len(ids) == 8
    (inst,) = worker.stats().instances
    assert inst.decode_steps == 7 and inst.decode_batch == 1.0  # the first token came with the prefill
    assert 0 < inst.decode_step_s < 10
    again = msgspec.msgpack.decode(msgspec.msgpack.encode(inst), type=P.WorkerInstance)
    assert (again.decode_step_s, again.decode_batch, again.decode_steps) == (inst.decode_step_s, 1.0, 7)


def test_a_worker_instance_from_before_the_fields_decodes_with_none_measured():
    old = msgspec.msgpack.encode({"name": "m", "in_flight": 2})
    inst = msgspec.msgpack.decode(old, type=P.WorkerInstance)
    assert (inst.decode_step_s, inst.decode_batch, inst.decode_steps) == (0.0, 0.0, 0)
