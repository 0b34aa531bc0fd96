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


def token_ids(ids, param: str, message: str | None = None, **fields) -> list[int]:
    """``ids`` as ints: integers of any kind (numpy's, 0-d tensors), not bools, floats or strings. ``message``:
    the error's text (default: one naming ``param``)."""
    try:
        out = [operator.index(t) for t in ids]
    except TypeError:
        out = None
    if out is None or any(type(t) is bool for t in ids):
        raise InvalidArgumentError(message or f"{param} must be integer token ids", param=param, **fields)
    return out
