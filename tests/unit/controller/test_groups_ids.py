"""A tp=2 model's group id differs between controllers: a remote worker that outlived its controller keeps, as
rank 0, a rendezvous store holding the keys of every group id it served, and a group joined again under one of
them meets the old ranks' addresses (gloo: connection refused after the group's whole timeout; found in a review
of the tp worker tests). Before, ids counted up per controller only: a restarted controller's first group on the
same GPUs was "tp2-g0-1-e1" again. Scripted peers on real sockets speak for the workers."""

import dataclasses

import pytest

from warmserve import protocol as P
from warmserve.config import ModelSpec

from controller_harness import make_controller, peers_in_order, run, until


@pytest.fixture(scope="module")
def tp_model(model):
    return dataclasses.replace(model, spec=ModelSpec(path=model.spec.path, name=model.name, tp=2))


def _first_group_id(tp_model) -> str:
    async def main():
        c = make_controller(tp_model)
        ep = await c.start()
        peers = await peers_in_order(c, ep, "host-1-cpu0", "host-1-cpu1")
        try:
            joins = lambda: [m for p in peers for m in p.got if isinstance(m, P.JoinGroup)]  # noqa: E731
            assert await until(lambda: len(joins()) == 2, 5)  # the group built at admission, on GPUs 0 and 1
            ids = {m.group_id for m in joins()}
            assert len(ids) == 1, ids
            return ids.pop()
        finally:
            await c.close(drain=False)
            for p in peers:
                p.close()

    return run(main())


def test_a_restarted_controller_names_its_groups_apart_from_the_last_one_s(tp_model):
    first, again = _first_group_id(tp_model), _first_group_id(tp_model)
    assert first.startswith("tp2-g0-1-e1") and again.startswith("tp2-g0-1-e1"), (first, again)
    assert first != again
