"""The log lines that say when the policy's first-tick colocation stands and when it is given up.

While it stands the scaling rules stand aside (``policy.colocating``): found in the overload review, a flooded model
on a fresh demo server (three models, two CPU workers, no history) kept its one instance with 168 requests queued
for a whole 90 s flood, the other worker near idle, and no line said why no instance was added."""

from __future__ import annotations

import logging

from warmserve.policy.colocating import RELAY_WAIT_S

log = logging.getLogger("warmserve.controller")


class LayoutLog:
    """Call ``after_tick`` after each policy tick; it logs a change of the layout's standing, once each way."""

    def __init__(self):
        self.models: tuple[str, ...] = ()
        self.moves = self.undone = 0
        self.unmet: set[tuple[str, tuple[str, ...]]] = set()  # (busy model, spares too small) said

    def after_tick(self, policy, live_gpus: int) -> None:
        now = tuple(getattr(policy, "layout_standing", ()))  # only the warmserve policy lays one out
        moves = getattr(policy, "layout_moves", 0)
        if moves != self.moves and now:
            busy, spare, gpus = policy.last_layout_move
            log.info("policy: %s, busy, takes the idle spare slot of %s on GPU(s) %s in the standing colocation "
                     "(layout_follows_load)", busy, spare, ",".join(map(str, gpus)))
        self.moves = moves
        undone = getattr(policy, "layout_undone", 0)
        if undone != self.undone and now:
            busy, spare, gpus = policy.last_layout_undo
            log.warning("policy: %s's instance in the slot it took from %s on GPU(s) %s was lost (its start failed or "
                        "its engine ended); %s is back in its slot and that move is not made again "
                        "(layout_follows_load)", busy, spare, ",".join(map(str, gpus)), spare)
        self.undone = undone
        for model, small in (getattr(policy, "layout_unmet", {}) if now else {}).items():
            if (model, small) not in self.unmet:  # once per model and reason while the layout stands
                self.unmet.add((model, small))
                log.info("policy: %s, busy, takes no slot in the standing colocation: the idle spare slot(s) of %s "
                         "hold too few bytes for its weights and one request at its context; it keeps its instances "
                         "until the layout is given up (layout_follows_load)", model, ", ".join(small))
        if now == self.models:
            return
        if now and not self.models:
            log.info("policy: more models with demand than GPUs, so the first tick laid out a fixed colocation of "
                     "%s on %d GPU(s) (colocate_when_oversubscribed); while it stands the scaling rules stand "
                     "aside (a busy model may take a quiet one's spare slot), until GPUs join, one lost is not "
                     "back within %g s, or a forecast from a day of history (--history) says the models fit",
                     ", ".join(now), live_gpus, RELAY_WAIT_S)
        elif not now:
            log.info("policy: the colocation laid out at the first tick is given up; the scaling rules decide from "
                     "now on")
        self.models = now
        if not now:
            self.unmet = set()
