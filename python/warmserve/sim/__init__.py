"""Discrete-event simulation of a multi-LLM cluster driven by the policy core, with GPU cost models.

    from warmserve.sim import simulate, SimConfig, ServedModel, CostModel
    from warmserve.sim.presets import paper_preset
    p = paper_preset("conv")
    result = simulate(p.build(1.0, 0), p.models, "warmserve", config=p.config)
    result.summary["ttft_p99_s"]
"""

from warmserve.sim.config import ServedModel, SimConfig
from warmserve.sim.costmodel import CostModel, GpuType, ModelCost
from warmserve.sim.metrics import RunResult
from warmserve.sim.simulator import Simulator, simulate

__all__ = ["CostModel", "GpuType", "ModelCost", "RunResult", "ServedModel", "SimConfig", "Simulator", "simulate"]
