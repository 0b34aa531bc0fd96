"""What the ranks of a tensor-parallel instance check they share before their first collective: the dtype and the
checkpoint their shards were prewarmed from (worker/tp.py, ``ShardRoles._activate_shard``).

Found in review: two ranks of one group prewarmed under one model name with different dtypes (or from different
checkpoints) activated, and their first engine step reached a collective with tensors of different sizes: gloo's
size check aborted the worker, or the step failed with an opaque error. The controller never sends that, a user
driving workers directly can. The values ride in the Activate's existing ``min_ints`` (no collective more): each
value x as (x, -x), whose minimums give the smallest and the largest value of any rank, equal when all agree."""

from __future__ import annotations

import hashlib
import json

from .. import errors

#: A rank that could not compute its values (it fails the Activate anyway, and says so to the others through the
#: KV vote) passes this at every position: it never lowers a minimum, so no mismatch is reported for it.
NEUTRAL = 2**63 - 1

#: Codes of the dtypes a checkpoint is loaded as (0: any other, named by the fingerprint alone), by name: this module
#: is imported with worker/tp.py, which a process decoding a worker's error imports without torch (errors._DEFINED_IN)
_DTYPE_CODES = {"float32": 1, "bfloat16": 2, "float16": 3}
_DTYPE_NAMES = {code: name for name, code in _DTYPE_CODES.items()}


def shard_values(lm) -> tuple[int, int]:
    """(dtype code, checkpoint fingerprint) of a prewarmed shard: the fingerprint hashes the dtype, the model's own
    config (config.json as read), the split and the shard's layout (tensor shapes and offsets, equal on every rank
    of one split: shards are padded to one size). Not the checkpoint's path: one checkpoint may sit under two
    paths, on two machines."""
    raw = json.dumps(lm.config.raw, sort_keys=True, default=str)
    layout = sorted((name, off, list(shape)) for name, (off, shape) in lm.layout.items())
    text = json.dumps([str(lm.dtype), raw, lm.config.tp, lm.weight_bytes, layout])
    digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 2  # > 0, and -x fits an int64
    return _DTYPE_CODES.get(str(lm.dtype).removeprefix("torch."), 0), digest


def vote_values(values: tuple[int, int] | None) -> list[int]:
    """The four values this rank adds to the Activate's ``min_ints``."""
    if values is None:
        return [NEUTRAL] * 4
    dt, fp = values
    return [dt, -dt, fp, -fp]


def check_agreed(agreed: list[int], mine: tuple[int, int], lm, group_id: str) -> None:
    """ModelStateError, on every rank alike, when the minimums of ``vote_values`` (``agreed``) show ranks whose
    shards differ in dtype or checkpoint. No rank computed NEUTRAL values here: each raised its own error."""
    dt_lo, dt_hi, fp_lo, fp_hi = agreed[0], -agreed[1], agreed[2], -agreed[3]
    if dt_lo == dt_hi and fp_lo == fp_hi:
        return
    dt, fp = mine
    if dt_lo != dt_hi:
        other = dt_hi if dt == dt_lo else dt_lo
        what = (f"as {_DTYPE_NAMES.get(dt, 'another dtype')}, another rank's as "
                f"{_DTYPE_NAMES.get(other, 'another dtype')}")
        fix = "prewarm it with one dtype on every rank"
    else:
        other = fp_hi if fp == fp_lo else fp_lo
        what = f"from a checkpoint of fingerprint {fp:#x} ({lm.path}), another rank's from one of {other:#x}"
        fix = "prewarm it from one checkpoint on every rank"
    raise errors.ModelStateError(
        f"the shards of {lm.name!r} in group {group_id!r} differ: this rank's is loaded {what} (dtype and checkpoint "
        "must be one on every rank, or the ranks' collectives carry tensors of different sizes). Fix: evict "
        f"{lm.name!r} on every worker of the group and {fix}", model=lm.name, group_id=group_id,
        fingerprint=f"{fp:#x}", other_fingerprint=f"{(fp_hi if fp == fp_lo else fp_lo):#x}")
