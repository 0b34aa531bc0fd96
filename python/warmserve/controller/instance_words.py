"""How the controller's log lines name an instance or a prewarm."""

from __future__ import annotations


def instance_words(iid: str, model: str, what: str = "instance") -> str:
    """"instance ID" (``what``: "prewarm" for a prewarm's id), with " of MODEL" only where the id does not begin
    with the model's name. The policies name them MODEL/iN and MODEL/pN; found in review of the logs, "instance
    llama-20m/i1 of llama-20m" said the model twice. An id of another form (a test's) still has its model said."""
    return f"{what} {iid}" if iid.startswith(f"{model}/") else f"{what} {iid} of {model}"
