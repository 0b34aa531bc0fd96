"""Real traces and the multi-model workloads built from them.

Loaders: ``load_azure`` (Azure LLM inference 2023, code/conv) and ``warmserve.workload.servegen`` (ServeGen).
Recipes: ``paper_workload`` (the paper's power-law split of one Azure trace) and ``servegen_workload``
(per-client series as distinct models). A ``Workload`` holds the replayed ``Trace`` and the forecast history.
"""

from warmserve.workload.azure import load_azure
from warmserve.workload.recipes import paper_workload, power_law_shares, regamma, servegen_workload
from warmserve.workload.request import Request, Trace, Workload

__all__ = ["Request", "Trace", "Workload", "load_azure", "paper_workload", "power_law_shares", "regamma",
           "servegen_workload"]
