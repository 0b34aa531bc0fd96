"""GPU sets of one server as 8-bit masks: the groups a replica or an instance of tensor-parallel degree tp may take,
which of them conflict with a replica's mask (laminar placement, §3), how badly taking one fragments the idle GPUs,
and tables over every mask. Pure functions of masks, cached where every tick asks them again; ``placement.Board``
and ``arbitration`` read them."""

from __future__ import annotations

import functools
import itertools

import numpy as np

MAX_GPUS_PER_SERVER = 8
TPS = (1, 2, 4, 8)


def _groups(tp: int) -> np.ndarray:
    return np.array([sum(1 << g for g in c) for c in itertools.combinations(range(MAX_GPUS_PER_SERVER), tp)],
                    dtype=np.int64)


GROUPS = {tp: _groups(tp) for tp in TPS}


def group_fits(masks: np.ndarray, tp: int) -> np.ndarray:
    """fits[s, k]: GPU group k of ``tp`` GPUs (``GROUPS[tp]``) lies wholly in server s's mask of ``masks``."""
    gm = GROUPS[tp]
    return (masks[:, None] & gm[None, :]) == gm[None, :]
#: GROUP_BITS[tp][k, g] is 1 when local GPU g is in group k.
GROUP_BITS = {tp: ((GROUPS[tp][:, None] >> np.arange(MAX_GPUS_PER_SERVER)) & 1).astype(np.float64) for tp in TPS}
_ALL_MASKS = np.arange(1 << MAX_GPUS_PER_SERVER, dtype=np.int64)


def _conflict_table(tp: int) -> np.ndarray:
    g = GROUPS[tp][None, :]
    p = _ALL_MASKS[:, None]
    inter = g & p
    return (inter != 0) & (inter != g) & (inter != p)


#: CONFLICT[tp][P, k]: group k of degree tp overlaps replica mask P partly.
CONFLICT = {tp: _conflict_table(tp) for tp in TPS}
POPCOUNT = np.array([bin(m).count("1") for m in range(1 << MAX_GPUS_PER_SERVER)])


def _aligned(tp: int) -> np.ndarray:
    blocks = {((1 << tp) - 1) << (j * tp) for j in range(MAX_GPUS_PER_SERVER // tp)}
    return np.array([int(g) in blocks for g in GROUPS[tp]])


#: ALIGNED[tp][k]: group k is tp consecutive GPUs starting at a multiple of tp (a buddy block).
ALIGNED = {tp: _aligned(tp) for tp in TPS}
#: BLOCK4[k]: the aligned 4-GPU block of local GPU k.
BLOCK4 = np.array([0x0F if k < 4 else 0xF0 for k in range(MAX_GPUS_PER_SERVER)], dtype=np.int64)


@functools.lru_cache(maxsize=4096)
def pack_key(idle_masks: tuple[int, ...], tp: int) -> np.ndarray:
    """Per server and group of degree tp, how badly taking the group fragments the idle GPUs (lower: better):
    unaligned groups last, then the idle GPUs left in the touched 4-GPU blocks, then those left on the server.
    Cached by the servers' idle masks, of which it is a pure function (every new instance's placement computed
    it), so read-only."""
    idle = np.array(idle_masks, dtype=np.int64)
    gm = GROUPS[tp]
    left = idle[:, None] & ~gm[None, :]
    blocks = np.zeros_like(left)
    for k in range(MAX_GPUS_PER_SERVER):
        touch = (gm >> k) & 1
        blocks |= np.where(touch[None, :] == 1, left & BLOCK4[k], 0)
    key = (~ALIGNED[tp])[None, :] * 1000.0 + POPCOUNT[blocks & 0xFF] * 10.0 + POPCOUNT[left & 0xFF]
    key.flags.writeable = False
    return key


def lexmin(feasible: np.ndarray, *keys: np.ndarray) -> int:
    """Flat index of the feasible entry whose keys are smallest, compared in order; ties: the lowest index."""
    idx = np.flatnonzero(feasible)
    for key in keys:
        if len(idx) == 1:
            break
        col = key.ravel()[idx]
        idx = idx[col == col.min()]
    return int(idx[0])


def is_laminar(masks: list[int]) -> bool:
    """True when every two masks are disjoint or nested."""
    for a, b in itertools.combinations(masks, 2):
        i = a & b
        if i and i != a and i != b:
            return False
    return True


#: MASK_COLS[mask]: the local GPU indices of a server mask (a Board makes a Replica per prewarm every tick)
MASK_COLS = [tuple(k for k in range(MAX_GPUS_PER_SERVER) if mask >> k & 1) for mask in range(1 << MAX_GPUS_PER_SERVER)]


@functools.lru_cache(maxsize=4096)
def forbidden(tp: int, masks: tuple[int, ...]) -> np.ndarray:
    """The groups of degree tp that overlap one of a server's replica masks ``masks`` partly (OR of ``CONFLICT``
    rows), read-only. Cached: a server's prewarms change seldom, and every tick's Board took 10% of a run here."""
    row = CONFLICT[tp][list(masks)].any(axis=0)
    row.flags.writeable = False
    return row


#: FITS_ANY[tp][mask]: some group of tp GPUs lies wholly in the server mask ``mask`` (``group_fits(...).any()`` of
#: one server, looked up: ``arbitration.relocations`` asked numpy every tick for every tp >= 2 model, a few % of a
#: run)
FITS_ANY = {tp: group_fits(np.arange(1 << MAX_GPUS_PER_SERVER), tp).any(axis=1).tolist() for tp in TPS}
