"""Token ids to text, incrementally: whole characters only, and stop strings cut where they begin.

The controller detokenizes (workers see token ids), so stop strings are enforced here: the text that could be the
start of a stop string is held back until it is known not to be one. Before min_tokens tokens a stop string does not
end the output: one counts only when a token after the first min_tokens completes it, as vLLM looks for one only
once the output has more than min_tokens tokens (in the text the newest tokens added). Each token is decoded in a
short window (the last tokens that added text as context, so that merges and leading spaces at the window's edge
come out as in a full decode), not with the whole sequence: a long generation costs linear, not quadratic, time,
and the text does not depend on how tokens were grouped into pushes.
"""

from __future__ import annotations

import bisect
import os

#: Most tokens one character's bytes can span (UTF-8's longest sequence is 4 bytes, a token holds at least one).
MAX_CHAR_TOKENS = 4
#: Most tokens a text ending in U+FFFD is held back for, waiting for the rest of a character: beyond one
#: character's tokens, room for stray bytes before it and for tokens that each end inside the next character.
HOLD_TOKENS = 4 * MAX_CHAR_TOKENS


class TextStream:
    def __init__(self, decode, stop: tuple[str, ...] = (), min_tokens: int = 0):
        self._decode = decode
        self.stop = tuple(stop)
        #: SamplingParams.min_tokens: a stop string ending in the text of the first min_tokens tokens is no stop.
        self.min_tokens = min_tokens
        self._hold = max((len(s) for s in self.stop), default=1) - 1
        #: The output's token ids: each one pushed, but once a stop string is found only those that begin before
        #: it, as the text is cut there (its own tokens and any after it go with it, though ``starts`` keeps where
        #: they began; tokens_to_stop() counts them).
        self.ids: list[int] = []
        #: Where each decoded token's text begins in the text (non-decreasing; ids past len(starts) are not in
        #: the text yet): which tokens lie before a stop string or before what has been handed out.
        self.starts: list[int] = []
        self.text = ""          # decoded text so far, cut at a stop string once one is seen
        self.emitted = 0        # characters of self.text already handed out
        self.stopped = False    # a stop string was found: the caller should end the request
        self.stop_len = 0       # characters of the stop string found (cut away after self.text)
        self._through = 0       # tokens generated through the one that completed the stop string, once stopped
        self._read = 0          # ids[_read:] are decoded after _ctx (the text of those that completed it is in)
        self._ctx: list[int] = []  # the last tokens that added text: context for decoding ids[_read:]
        self._base = 0          # characters of decode(_ctx + ids[_read:]) already in self.text
        self._ctx_base = 0      # characters of decode(_ctx) already in self.text
        self.ended = False      # finish() ran: no more text comes
        self._placed = 0        # starts[:_placed] are final: each lies inside text already in self.text

    def push(self, ids, stop_token: bool = False) -> str:
        """Add generated token ids; return the text that is now safe to hand out.

        ``stop_token``: these are the generation's last ids, and the last of them is the EOS or stop token id that
        ended it. It is one of the generation's tokens (kept in ``ids``, counted) but its text is not the output's,
        as vLLM leaves it out (found in review: a stop_token_ids id, or an EOS the tokenizer does not mark special,
        came back as text); the rest of the text comes out now, as from ``finish``."""
        if self.stopped or self.ended:
            return ""
        if stop_token and len(ids):
            ids = list(ids)
            out = self.push(ids[:-1]) + self.finish()
            if not self.stopped:  # after a stop string it is one of the tokens cut with it
                self.ids.append(ids[-1])
            return out
        before = len(self.text)
        for t in ids:  # one at a time: each decode covers a few tokens, whatever the size of the burst
            self.ids.append(t)
            self._advance(final=False)
        if len(self.text) == before:
            return ""
        return self._check_stop(len(self.text) - self._hold)

    def finish(self) -> str:
        """The rest of the text, once no more tokens will come."""
        out = ""
        if not self.stopped and not self.ended:
            self._advance(final=True)
            out = self._check_stop(len(self.text))
        self.ended = True
        return out + self._take(len(self.text))

    def _advance(self, final: bool) -> None:
        """Put the tokens ids[_read:] in the text, decoded after the context (the last tokens that added text, so
        that merges and leading spaces come out as in a full decode); each token begins where the text before it
        ends, or, once a held run resolves, where its own text begins (``_place``). A text ending in U+FFFD may end
        in a character whose next byte is still to come (byte-fallback decoders show one U+FFFD per byte of it),
        so that run waits, for at most HOLD_TOKENS tokens; the text before it does not. Each decode covers the
        context and at most HOLD_TOKENS tokens: a run of tokens that add no text (an EOS generated with ignore_eos,
        a skipped special token) or of stray bytes costs linear time (found in review: each push decoded the whole
        run again, 4000 such tokens took 2.3 s)."""
        self.starts.extend([len(self.text)] * (len(self.ids) - len(self.starts)))
        pending = self.ids[self._read:]
        if not pending:
            return
        after = self._decode(self._ctx + pending)
        held = after.endswith("\ufffd") and not final and len(pending) < HOLD_TOKENS
        # At the limit the run is written out, but not a character it may end inside (found in review: a lead byte
        # ending the run became a U+FFFD for good, the bytes after it adding nothing, so "日" was lost).
        unfinished = self._unfinished(pending, after) if after.endswith("\ufffd") and not final and not held else 0
        usable = len(after.rstrip("\ufffd")) if held else len(after) - (1 if unfinished else 0)
        if usable > self._base:
            self.text += after[self._base:usable]
            self._base = usable
            if len(pending) > 1:
                self._place(pending, after, usable)
        if held:
            return
        if unfinished:
            # Its tokens stay pending, decoded after the tokens before them: a later byte completes the character.
            self._rebase((self._ctx + pending[:-unfinished])[-MAX_CHAR_TOKENS:])
            self._read -= unfinished
            return
        if len(pending) >= HOLD_TOKENS:
            # A held run this long is stray bytes (or characters straddled by token after token): it is text as
            # it is; the last tokens stay as context, each later decode repeating their text first.
            self._rebase(pending[-MAX_CHAR_TOKENS:])
        elif usable > self._ctx_base:
            self._rebase(pending)
        elif not self.text:
            # No text yet: tokens that add none may still shape what follows (SentencePiece's first "\u2581" loses
            # its space, a second one shows it), so the last few stay in the context. Once there is text, a token
            # that adds none is a skipped special token, which a full decode leaves out too.
            self._rebase((self._ctx + pending)[-MAX_CHAR_TOKENS:])
        else:
            self._read, self._base = len(self.ids), self._ctx_base

    def _place(self, pending: list[int], after: str, usable: int) -> None:
        """The starts of the tokens of ``pending`` after its first, once text of theirs is in self.text: each
        begins where the text its predecessors decode to (after the context) parts from ``after``, their decode.
        Found in review: each token was given the text's length before its decode, so while a run ending in U+FFFD
        was held back the token that resolved it got the start of the held bytes: after a stray lead byte, "_"
        began at the U+FFFD before it (text_offset 0, not 1). A prefix decode that ends inside a character shows
        U+FFFD where ``after`` has the character, so the token that completes it still begins with the character;
        a stray byte's U+FFFD is in ``after`` too, so the token after it begins past it. A start inside text
        already in self.text is final (a streaming reader may have been handed it)."""
        first = self._read
        origin = len(self.text) - usable  # where after[0] lies in self.text
        # Tokens before the first pending one are never placed again; those placed inside the text are skipped
        # (a long held run would otherwise decode every prefix again on each push that adds text).
        self._placed = max(self._placed, first + 1)
        floor = self.starts[self._placed - 1]
        for j in range(self._placed - first, len(pending)):
            k = first + j
            common = len(os.path.commonprefix([self._decode(self._ctx + pending[:j]), after]))
            floor = self.starts[k] = max(floor, origin + common)  # starts stay non-decreasing (bisect)
            if k == self._placed and floor < len(self.text):
                self._placed = k + 1

    def _unfinished(self, pending: list[int], after: str) -> int:
        """How many of the last tokens of ``pending`` (at most MAX_CHAR_TOKENS - 1: a character's bytes but its
        last) make up the U+FFFD that ``after``, their decode after the context, ends in: those of a character whose
        next byte may still come. 0 when no such tokens decode to that U+FFFD alone."""
        for k in range(1, min(MAX_CHAR_TOKENS, len(pending))):
            if self._decode(self._ctx + pending[:-k]) == after[:-1]:
                return k
        return 0

    def _rebase(self, ctx: list[int]) -> None:
        """Decode what follows after ``ctx``, whose decode is text already handed to self.text (or, for bytes of a
        character begun before it, U+FFFD that every longer decode repeats first)."""
        self._ctx = ctx
        self._base = self._ctx_base = len(self._decode(ctx))
        self._read = len(self.ids)

    def _chars(self, ids: list[int]) -> int:
        return len(self._decode(ids).rstrip("\ufffd")) if ids else 0

    def _check_stop(self, safe_upto: int) -> str:
        if self.stop:
            start = max(0, self.emitted - self._hold)
            # The match that ends first (then the one that starts first) is the one a token-by-token reader sees
            # complete first: so the cut depends on the text alone, not on how many tokens a slow reader had
            # coalesced into this push (found in review: with "bc" and "abcd", a burst cut at "abcd").
            floor = self._min_tokens_chars()
            if floor is None:  # the output is not past min_tokens yet: no stop string ends it
                return self._take(safe_upto)
            found = [(i + len(s), i, len(s)) for s in self.stop
                     for i in (self.text.find(s, max(start, floor - len(s) + 1)),) if i >= 0]
            if found:
                _, cut, self.stop_len = min(found)
                self.text = self.text[:cut]
                self.stopped = True
                self._through = self._count_through()
                # ids and logprobs (one per id) list the tokens of the text alone (found in review: Cluster's
                # token_ids kept the stop string's tokens, which its logprobs left out)
                del self.ids[bisect.bisect_left(self.starts, cut):]
                return self._take(len(self.text))
        return self._take(safe_upto)

    def _min_tokens_chars(self) -> int | None:
        """Characters of the text that the first min_tokens tokens make (a stop string must end past them), or None
        while no token after them is in the text."""
        if not self.min_tokens:
            return 0
        return self.starts[self.min_tokens] if len(self.starts) > self.min_tokens else None

    def tokens_to_stop(self) -> int:
        """Tokens up to the one that completed the stop string (all of them if none was found): the tokens
        generated as far as the text goes, the stop string's included, though ``ids`` leaves those out. Tokens
        that came after it in the same push are not the output's (found in review: usage counted them)."""
        return self._through if self.stopped else len(self.ids)

    def _count_through(self) -> int:
        """tokens_to_stop() when a stop string has just been found, before ``ids`` is cut: decodes a few prefixes,
        once per request."""
        k = len(self.ids)
        need = len(self.text) + self.stop_len
        # Complete characters only: a prefix ending inside a multi-byte character decodes with a U+FFFD that is
        # not text yet, and counting it stopped the walk before the token that completed the stop string.
        while k > 1 and self._chars(self.ids[:k - 1]) >= need:
            k -= 1
        return k

    def _take(self, upto: int) -> str:
        if upto <= self.emitted:
            return ""
        out = self.text[self.emitted:upto]
        self.emitted = upto
        return out


def token_starts(ids, decode) -> list[int]:
    """Where each token of ``ids`` begins in their decoded text, never past its end (an echoed prompt's
    ``text_offset``), decoding as a stream does: linear time."""
    t = TextStream(decode)
    t.push(ids)
    t.finish()
    end = len(t.text)
    return [min(s, end) for s in t.starts]
