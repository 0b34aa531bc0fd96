"""warmserve: multi-LLM serving with forecast-driven one-for-many GPU prewarming.

The public API is imported lazily so that `import warmserve` stays cheap (no torch) for the CLI, the policy core
and the simulator.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "Cluster": "warmserve.controller.cluster",
    "ClusterConfig": "warmserve.config",
    "ModelSpec": "warmserve.config",
    "SamplingParams": "warmserve.protocol",
    "Completion": "warmserve.controller.cluster",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'warmserve' has no attribute {name!r}")


__all__ = ["Cluster", "ClusterConfig", "Completion", "ModelSpec", "SamplingParams", "__version__"]
