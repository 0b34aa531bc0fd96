"""Token ids to text, incrementally: whole characters only, and stop strings cut where they begin.

The controller detokenizes (workers see token ids), so stop strings are enforced here: the text that could be the
start of a stop string is held back until it is known not to be one.
"""

from __future__ import annotations


class TextStream:
    def __init__(self, decode, stop: tuple[str, ...] = ()):
        self._decode = decode
        self.stop = tuple(stop)
        self._hold = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.text = ""          # decoded text so far, cut at a stop string once one is seen
        self.emitted = 0        # characters of self.text already handed out
        self.stopped = False    # a stop string was found: the caller should end the request

    def push(self, ids) -> str:
        """Add generated token ids; return the text that is now safe to hand out."""
        if self.stopped:
            return ""
        self.ids.extend(ids)
        full = self._decode(self.ids)
        if full.endswith("\ufffd"):
            # A multi-byte character is split across tokens: wait for the rest of it.
            return ""
        self.text = full
        if self.stop:
            start = max(0, self.emitted - self._hold)
            cut = min((i for i in (full.find(s, start) for s in self.stop) if i >= 0), default=-1)
            if cut >= 0:
                self.text = full[:cut]
                self.stopped = True
                return self._take(len(self.text))
        return self._take(len(full) - self._hold)

    def finish(self) -> str:
        """The rest of the text, once no more tokens will come."""
        if not self.stopped and self.ids:
            self.text = self._decode(self.ids)
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        if upto <= self.emitted:
            return ""
        out = self.text[self.emitted:upto]
        self.emitted = upto
        return out
