"""Token ids to text, incrementally: whole characters only, and stop strings cut where they begin.

The controller detokenizes (workers see token ids), so stop strings are enforced here: the text that could be the
start of a stop string is held back until it is known not to be one. Each push decodes only a short window of
recent tokens (the previous step's tokens as context, so that merges and leading spaces at the window's edge come
out as in a full decode), not the whole sequence: a long generation costs linear, not quadratic, time.
"""

from __future__ import annotations


class TextStream:
    def __init__(self, decode, stop: tuple[str, ...] = ()):
        self._decode = decode
        self.stop = tuple(stop)
        self._hold = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        #: Where each decoded token's text begins in the text (non-decreasing; ids past len(starts) are not in
        #: the text yet): which tokens lie before a stop string or before what has been handed out.
        self.starts: list[int] = []
        self.text = ""          # decoded text so far, cut at a stop string once one is seen
        self.emitted = 0        # characters of self.text already handed out
        self.stopped = False    # a stop string was found: the caller should end the request
        self.stop_len = 0       # characters of the stop string found (cut away after self.text)
        self._prefix = 0        # ids[_prefix:_read] were decoded last time: the context window
        self._read = 0          # ids[:_read] are in self.text
        self.ended = False      # finish() ran: no more text comes

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
            self.ids.append(ids[-1])
            return out
        self.ids.extend(ids)
        if not self._advance(final=False):
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

    def _advance(self, final: bool) -> bool:
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        # A multi-byte character split across tokens decodes as U+FFFD until its last byte arrives.
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
            return False
        self._place(len(self.text), len(self.text) + len(after) - len(before))
        self.text += after[len(before):]
        self._prefix, self._read = self._read, len(self.ids)
        return True

    def _place(self, begin: int, end: int) -> None:
        """Record where the tokens ids[_read:] begin, their text spanning [begin, end). The first begins at
        ``begin``; each next one after the characters its predecessor adds, decoded with one token of context
        (so a leading space or a merge comes out as in the whole text: linear cost, not a prefix decode per token).
        A trailing U+FFFD is a character still incomplete, which belongs to the token that completes it."""
        pos = begin
        self.starts.append(pos)
        for k in range(self._read + 1, len(self.ids)):
            ctx = self.ids[max(0, k - 2):k - 1]
            adds = self._chars(ctx + self.ids[k - 1:k]) - self._chars(ctx)
            pos = min(end, pos + max(0, adds))
            self.starts.append(pos)

    def _chars(self, ids: list[int]) -> int:
        return len(self._decode(ids).rstrip("\ufffd")) if ids else 0

    def _check_stop(self, safe_upto: int) -> str:
        if self.stop:
            start = max(0, self.emitted - self._hold)
            # The match that ends first (then the one that starts first) is the one a token-by-token reader sees
            # complete first: so the cut depends on the text alone, not on how many tokens a slow reader had
            # coalesced into this push (found in review: with "bc" and "abcd", a burst cut at "abcd").
            found = [(i + len(s), i, len(s)) for s in self.stop for i in (self.text.find(s, start),) if i >= 0]
            if found:
                _, cut, self.stop_len = min(found)
                self.text = self.text[:cut]
                self.stopped = True
                return self._take(len(self.text))
        return self._take(safe_upto)

    def tokens_to_stop(self) -> int:
        """Tokens up to the one that completed the stop string (all of them if none was found): the tokens
        generated as far as the text goes. Tokens that came after it in the same push are not the output's (found
        in review: usage counted them). Decodes a few prefixes, once, at the end of a request."""
        k = len(self.ids)
        if not self.stopped:
            return k
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
