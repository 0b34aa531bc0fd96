"""Tokens.seq as the worker numbers it: per peer and request, from 0, held only while a generation streams."""

from __future__ import annotations

from warmserve import errors
from warmserve import protocol as P
from warmserve.worker.numbering import TokensNumbering


def _seqs(n: TokensNumbering, peer: bytes, id: int, count: int, finished: bool = False) -> list[int]:
    out = [n.stamp(peer, P.Tokens(id=id, token_ids=[1])).seq for _ in range(count)]
    if finished:
        out.append(n.stamp(peer, P.Tokens(id=id, token_ids=[], finished=True, finish_reason="length")).seq)
    return out


def test_each_generation_of_each_peer_is_numbered_from_zero_and_forgotten_at_its_end():
    n = TokensNumbering()
    assert _seqs(n, b"a", 1, 3) == [0, 1, 2]
    assert _seqs(n, b"b", 1, 2) == [0, 1]  # the same id from another peer is another generation
    assert _seqs(n, b"a", 1, 1, finished=True) == [3, 4]
    assert len(n) == 1
    n.stamp(b"b", P.Error.of(1, errors.EngineError("step failed")))
    assert len(n) == 0
    assert _seqs(n, b"a", 2, 2) == [0, 1]
    n.forget(b"a", [2])  # given up on: nothing more is sent for it
    assert len(n) == 0


def test_other_messages_pass_unchanged_and_seq_crosses_the_wire():
    n = TokensNumbering()
    ok = P.Ok(id=7)
    assert n.stamp(b"a", ok) is ok and len(n) == 0
    _seqs(n, b"a", 3, 2)
    msg = P.decode_reply(P.encode(n.stamp(b"a", P.Tokens(id=3, token_ids=[5]))))
    assert isinstance(msg, P.Tokens) and msg.seq == 2
    assert P.decode_reply(P.encode(P.Tokens(id=3, token_ids=[5]))).seq == 0  # the first is sent without it
