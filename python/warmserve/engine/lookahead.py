"""Decode lookahead (issue 13): the next decode step's graph replay is launched before this step's tokens are read
back, so the device runs step n+1 while the host appends step n's tokens, checks stops, tidies the KV cache and
schedules. Without it the device idles for the host's part of every step: about 0.15 ms of a 1.10 ms batch-1 step
of the 1b demo on an H200 (bench/engine/README.md), what keeps it from half the HBM roofline.

How: a step whose rows are all greedy (``eligible``) takes its tokens as the argmax of the graph's logits on the
device (what the sampler would choose: nothing adjusts a greedy row's logits without penalties or a pending
min_tokens), copies them back to pinned memory asynchronously, and before waiting for that copy launches the
replay of every row one position on, its input token being that argmax (``DecodeGraphs.launch(tokens=...)``, a
device-to-device copy after the upload). The next step uses that replay when the scheduler hands it exactly those
sequences at exactly those positions (``tokens``); otherwise (a request finished, arrived, was aborted or
preempted) the replay in flight is simply not used and the step launches its own.

Why an unused replay is harmless: it writes each row's K/V at the row's next position, into a block the sequence
already holds (``_next`` launches nothing when a row would need a new block), from the token the row did produce.
A sequence that goes on gets the same K/V written again by its real step; one that ended or was preempted wrote
into its own block before any later owner's writes, which come after it in stream order; an unmap drains the
device first (Backend::drain). On by default (``Engine.decode_lookahead``): on an H200 (2026-12-04) bench/gpu_graphs.py
part 10 timed the 1b's greedy decode with graphs 1.21x (batch 1) and 1.26x (batch 16) faster than plain replays,
the same tokens; tests/unit/engine/test_decode_lookahead.py checks the tokens on the CPU, each replay run eagerly.
"""

from __future__ import annotations

import contextlib

import torch

from warmserve.engine.graphs import MAX_GRAPH_BATCH


class DecodeLookahead:
    """The lookahead of one engine over its decode graphs (``graphs``: DecodeGraphs, or anything with its
    ``launch``, ``output``, ``width`` and ``device``)."""

    def __init__(self, graphs, block_tokens: int):
        self.graphs = graphs
        self.block_tokens = block_tokens
        cuda = torch.device(graphs.device).type == "cuda"
        self._tok = torch.zeros(MAX_GRAPH_BATCH, dtype=torch.int64, device=graphs.device)
        self._host = torch.zeros(MAX_GRAPH_BATCH, dtype=torch.int64, pin_memory=cuda)
        self._read = torch.cuda.Event() if cuda else None
        self._on_device = (lambda: torch.cuda.device(graphs.device)) if cuda else contextlib.nullcontext
        #: The replay in flight: (its sequences, their positions, its bucket), or None.
        self._pending: tuple[tuple, tuple[int, ...], int] | None = None
        #: Steps whose replay the step before had launched, and replays launched ahead.
        self.hits = 0
        self.launched = 0

    @staticmethod
    def eligible(chunks) -> bool:
        """Whether every row's token is the argmax of its logits as they come out of the graph: greedy, no
        penalties, no logprobs to report, min_tokens reached (else EOS and stop ids are held back)."""
        for c in chunks:
            p = c.seq.params
            if not (c.samples and p.greedy and not p.penalized and p.logprobs is None
                    and len(c.seq.output) >= p.min_tokens):
                return False
        return True

    def drop(self) -> None:
        """A step that does not come through here: the replay in flight (if any) is not this engine's next."""
        self._pending = None

    def tokens(self, chunks, token_of) -> list[int]:
        """The greedy token of each decode chunk (``eligible``), with the replay of the step after launched before
        they are read back. token_of(seq, position): the token id at a position (Engine._token)."""
        g, n = self.graphs, len(chunks)
        pend, self._pending = self._pending, None
        if (pend is not None and len(pend[0]) == n
                and all(c.seq is s and c.start == p for c, s, p in zip(chunks, pend[0], pend[1]))):
            b = pend[2]
            self.hits += 1
        else:
            b = g.launch([(token_of(c.seq, c.start), c.start, c.seq.blocks) for c in chunks])
        with self._on_device(), torch.inference_mode():  # the event and the copies on the engine's device
            tok = self._tok[:n]
            torch.argmax(g.output(b)[:n], dim=-1, out=tok)
            self._host[:n].copy_(tok, non_blocking=True)
            if self._read is not None:
                self._read.record()
            nxt = self._next(chunks)
            if nxt is not None:
                self._pending = (tuple(c.seq for c in chunks), tuple(p for _, p, _ in nxt), g.launch(nxt, tok))
                self.launched += 1
        if self._read is not None:
            self._read.synchronize()
        return self._host[:n].tolist()

    def _next(self, chunks) -> list[tuple[int, int, list[int]]] | None:
        """The decodes one position on (token 0: the device writes the real one), or None when a row's next
        position needs a block its sequence does not hold yet (the scheduler adds it) or the graph cannot read."""
        T, width = self.block_tokens, self.graphs.width
        out = []
        for c in chunks:
            p = c.start + 1
            if p // T >= min(len(c.seq.blocks), width):
                return None
            out.append((0, p, c.seq.blocks))
        return out
