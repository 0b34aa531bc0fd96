"""The blocks an engine's steps take, counted: what ``Scheduler.blocks_wanted`` must predict (a tensor-parallel
shard maps by it before each step, worker/tp.py)."""


def count_allocations(eng) -> list:
    """Wrap ``eng.kv.allocate`` so that every block it gives is appended to the returned list (clear it before a
    step, read it after)."""
    taken = []
    allocate = eng.kv.allocate

    def counting():
        b = allocate()
        if b is not None:
            taken.append(b)
        return b

    eng.kv.allocate = counting
    return taken
