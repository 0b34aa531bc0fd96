"""Numbering each generation's ``Tokens`` on the worker's side (``protocol.Tokens.seq``): the socket worker and its
in-process twin stamp every reply with it as they send it."""

from __future__ import annotations

from typing import Any

from .. import protocol as P


class TokensNumbering:
    """Numbers each generation's ``Tokens`` (``Tokens.seq``) on the worker's side, as they are sent.

    A connection that breaks and is re-made at once (a reset, or a client whose new connection took its routing id
    over before the worker saw the old one go) loses what it carried, and neither end is told: the stream went on
    with a gap, and its text came back with tokens missing (found in review). Numbered, the reader sees the gap
    at the next message of the stream. One entry per generation streaming, ended by its final message."""

    def __init__(self):
        self._next: dict[tuple[Any, int], int] = {}

    def stamp(self, peer, msg):
        """``msg`` (sent to ``peer``), its ``seq`` set when it is Tokens."""
        if isinstance(msg, P.Tokens):
            key = (peer, msg.id)
            msg.seq = self._next.pop(key, 0)
            if not msg.finished:
                self._next[key] = msg.seq + 1
        elif isinstance(msg, P.Error):
            self._next.pop((peer, msg.id), None)
        return msg

    def forget(self, peer, ids: list[int]) -> None:
        """Generations of ``peer`` that ended unanswered (it was given up on)."""
        for id in ids:
            self._next.pop((peer, id), None)

    def __len__(self) -> int:
        return len(self._next)
