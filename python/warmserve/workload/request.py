"""A request, and a workload: the requests to replay plus the earlier requests that feed the forecasts.

A workload stores its requests column-wise (numpy arrays, sorted by arrival) because recipes build hundreds of
thousands of them and the simulator walks them in order; ``Request`` is the record one row stands for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec
import numpy as np

from warmserve.errors import InvalidArgumentError


class Request(msgspec.Struct, frozen=True):
    """One inference request of a trace."""

    #: arrival time in seconds; 0 is the start of the replayed span, history is negative
    arrival_s: float
    #: name of the model the request is for
    model: str
    #: prompt length in tokens
    prompt_tokens: int
    #: tokens the request generates (at least 1: the first token comes out of the prefill)
    output_tokens: int


#: the longest token length a trace holds (lengths are stored as int32)
MAX_TOKENS = 2**31 - 1


def _refuse_rows(values: np.ndarray, bad: np.ndarray, col: str, want: str) -> None:
    """Raise InvalidArgumentError for the first row (in the order given) where ``bad`` holds."""
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        v = values[i].item()
        raise InvalidArgumentError(f"Trace row {i}: {col} {v} is not {want} ({int(bad.sum())} such rows of "
                                   f"{len(values)}): fix those rows before building the Trace", row=i, column=col,
                                   value=v)


def _lengths(col, name: str) -> np.ndarray:
    """A token-length column as int32, refusing NaN and values outside [0, MAX_TOKENS] before the cast."""
    raw = np.asarray(col)
    if raw.dtype.kind in "iuf":
        with np.errstate(invalid="ignore"):
            _refuse_rows(raw, ~((raw >= 0) & (raw <= MAX_TOKENS)), name, f"a token count in [0, {MAX_TOKENS}]")
    return np.asarray(raw, dtype=np.int32)


@dataclass
class Trace:
    """Requests column-wise, sorted by arrival. ``model`` holds indices into ``models``."""

    models: list[str]
    arrival_s: np.ndarray
    model: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray

    def __post_init__(self):
        # found in review: nothing was checked, so a NaN or infinite arrival was kept (simulate() then never
        # ended: its horizon was NaN/inf), an int64 length past 2**31 wrapped to a negative int32 and a negative
        # output became 1. Each is refused, naming its row; lengths before the cast. An output of 0 still means 1
        # (the first token comes out of the prefill), and negative arrivals are history, as before
        self.arrival_s = np.asarray(self.arrival_s, dtype=np.float64)
        _refuse_rows(self.arrival_s, ~np.isfinite(self.arrival_s), "arrival_s", "finite (a time in seconds)")
        self.model = np.asarray(self.model, dtype=np.int32)
        self.prompt_tokens = _lengths(self.prompt_tokens, "prompt_tokens")
        self.output_tokens = np.maximum(_lengths(self.output_tokens, "output_tokens"), 1)
        n = len(self.arrival_s)
        if not (len(self.model) == len(self.prompt_tokens) == len(self.output_tokens) == n):
            # typed (still a ValueError), naming each column and the fix, found in review
            raise InvalidArgumentError(f"Trace columns differ in length: arrival_s {n}, model {len(self.model)}, "
                                       f"prompt_tokens {len(self.prompt_tokens)}, output_tokens "
                                       f"{len(self.output_tokens)}: give each column one entry per request",
                                       lengths=[n, len(self.model), len(self.prompt_tokens), len(self.output_tokens)])
        order = np.argsort(self.arrival_s, kind="stable")
        if n and np.any(order != np.arange(n)):
            self.arrival_s, self.model = self.arrival_s[order], self.model[order]
            self.prompt_tokens, self.output_tokens = self.prompt_tokens[order], self.output_tokens[order]

    def __len__(self) -> int:
        return len(self.arrival_s)

    def __iter__(self):
        names = self.models
        for t, m, p, o in zip(self.arrival_s.tolist(), self.model.tolist(), self.prompt_tokens.tolist(),
                              self.output_tokens.tolist()):
            yield Request(t, names[m], p, o)

    @classmethod
    def empty(cls, models: list[str]) -> "Trace":
        return cls(list(models), np.zeros(0), np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int32))

    @classmethod
    def concat(cls, models: list[str], parts: list["Trace"]) -> "Trace":
        """Merge traces whose ``models`` are subsets of ``models`` (indices are remapped by name)."""
        if not parts:
            return cls.empty(models)
        index = {m: i for i, m in enumerate(models)}
        cols = [[], [], [], []]
        for p in parts:
            remap = np.array([index[m] for m in p.models], dtype=np.int32)
            cols[0].append(p.arrival_s)
            cols[1].append(remap[p.model] if len(p) else p.model)
            cols[2].append(p.prompt_tokens)
            cols[3].append(p.output_tokens)
        return cls(list(models), *(np.concatenate(c) for c in cols))

    def select(self, mask: np.ndarray) -> "Trace":
        return Trace(self.models, self.arrival_s[mask], self.model[mask], self.prompt_tokens[mask],
                     self.output_tokens[mask])

    def span(self, start_s: float, end_s: float) -> "Trace":
        """The requests arriving in [start_s, end_s)."""
        lo, hi = np.searchsorted(self.arrival_s, [start_s, end_s], side="left")
        return Trace(self.models, self.arrival_s[lo:hi], self.model[lo:hi], self.prompt_tokens[lo:hi],
                     self.output_tokens[lo:hi])

    def rate_rps(self) -> float:
        if len(self) < 2:
            return 0.0
        return len(self) / max(float(self.arrival_s[-1] - self.arrival_s[0]), 1e-9)


@dataclass
class Workload:
    """What a simulation replays: ``trace`` (arrivals in [0, duration_s)) and ``history`` (arrivals < 0).

    History is what the forecasts learn from before the replay starts: the same slot of earlier days and the
    stretch just before t=0, as the recipe chose. Both use the same model list.
    """

    name: str
    trace: Trace
    history: Trace
    duration_s: float
    #: seconds in a "day" of this workload: history windows ``k * day_s`` before a replayed window are the
    #: same slot of an earlier day (what the forecast prior averages over)
    day_s: float = 86400.0
    meta: dict = field(default_factory=dict)
    #: history in [-warmup_s, 0) is replayed before t=0 (unmeasured) so the cluster starts from a live state
    warmup_s: float = 0.0
    #: time of t=0 on the policy's clock, where 0 is a local midnight (so history days stay >= 0)
    clock0_s: float = 0.0
    #: the spans [start, end) (seconds, < 0) the history covers; load outside them is unknown, not zero.
    #: Empty: only windows with arrivals count as known
    history_spans: list = field(default_factory=list)

    @property
    def models(self) -> list[str]:
        return self.trace.models

    def requests(self):
        """The replayed requests as ``Request`` records, in arrival order."""
        return iter(self.trace)
