"""From a review of the Ray launcher: its check that every node has the checkpoints (``missing_checkpoints``, run on
each node) looks for the weights too (a node holding config.json and the tokenizer alone passed, and every start of
the model failed on that node's worker, the other node never tried); a dead actor's reason is Ray's cause, not its
fixed first line (``ray_error_line``)."""

from __future__ import annotations

import json

from warmserve.controller.ray_checks import missing_checkpoints


def test_a_checkpoint_without_its_weights_or_a_shard_is_missing_and_a_whole_one_is_not(tmp_path):
    bare, sharded, whole = tmp_path / "bare", tmp_path / "sharded", tmp_path / "whole"
    for d in (bare, sharded, whole):
        d.mkdir()
        (d / "config.json").write_text("{}")
    (whole / "model.safetensors").write_bytes(b"x")
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (sharded / "model-00001-of-00002.safetensors").write_bytes(b"x")
    gone = tmp_path / "gone"
    assert missing_checkpoints([str(bare), str(sharded), str(whole), str(gone)]) == [
        str(bare / "model.safetensors"), str(sharded / "model-00002-of-00002.safetensors"),
        str(gone / "config.json"), str(gone / "model.safetensors")]


def test_a_dead_actors_reason_is_its_cause_not_rays_fixed_first_line():
    import ray.exceptions as rx
    from ray.core.generated.common_pb2 import ActorDiedErrorContext

    from warmserve.controller.ray_checks import ray_error_line

    died = rx.ActorDiedError(ActorDiedErrorContext(
        error_message="The actor is dead because its node has died.", class_name="_WorkerActor",
        actor_id=b"\x01" * 16, pid=77, node_ip_address="127.0.0.1"))
    assert str(died).startswith("The actor died unexpectedly")  # Ray's fixed first line, which /stats showed
    assert ray_error_line(died) == "The actor is dead because its node has died."
    assert ray_error_line(rx.ActorDiedError()) == rx.ActorDiedError.BASE_ERROR_MSG  # no cause known: all there is
    assert ray_error_line(RuntimeError("worker exited with status 3\nmore")) == "worker exited with status 3"
    assert ray_error_line(RuntimeError("")) == "RuntimeError"
