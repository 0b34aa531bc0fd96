"""Argument checks of the engine's API, shared with the controller's request parsing: typed errors naming the
argument, where Python's own conversions truncated floats, parsed strings or raised bare errors (found in review)."""

from __future__ import annotations

import operator

from warmserve.errors import InvalidArgumentError


def check_counts(nullable: frozenset = frozenset(), **values: tuple) -> None:
    """Each keyword: (value, least allowed): a whole number (not a bool) at least that, or None for the names in
    ``nullable`` (found in review: max_batch_tokens=1.5 failed at the first step as a bare TypeError,
    target_free_blocks=-1 and map_blocks_per_step=0 were taken, the latter never mapping a block ahead)."""
    for name, (v, least) in values.items():
        if v is None and name in nullable:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise InvalidArgumentError(f"{name} must be a whole number >= {least}, got {v!r}", param=name)


def token_ids(ids, param: str, what: str | None = None, fix: str = "", **fields) -> list[int]:
    """``ids`` as ints: integers of any kind (numpy's, 0-d tensors), not bools, floats or strings. A refusal says
    ``what`` (default: one naming ``param``), then the first item that is none (``param``[i] = value, its index in
    the fields), then ``fix``."""
    try:
        out = [operator.index(t) for t in ids]
    except TypeError:
        out = None
    if out is None or any(type(t) is bool for t in ids):
        i, bad = next((i, t) for i, t in enumerate(ids) if not _is_id(t))
        raise InvalidArgumentError(
            f"{what or param + ' must be integer token ids'}, got {param}[{i}] = {bad!r:.40} ({type(bad).__name__})"
            + (f": {fix}" if fix else ""), param=param, index=i, **fields)
    return out


def _is_id(t) -> bool:
    if type(t) is bool:
        return False
    try:
        operator.index(t)
    except TypeError:
        return False
    return True
