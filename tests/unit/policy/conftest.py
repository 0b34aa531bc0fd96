import pytest

from warmserve.policy.state import ClusterState, ModelInfo

GB = 10**9


def _llama(name: str, size: str = "7b") -> ModelInfo:
    """The paper's three sizes: weights, tp, KV bytes per token and latency profile."""
    return {
        "7b": ModelInfo(name, 13_500_000_000, 1, 524_288, 0.035, 0.015),
        "13b": ModelInfo(name, 26 * GB, 2, 819_200, 0.070, 0.020),
        "70b": ModelInfo(name, 138 * GB, 4, 327_680, 0.100, 0.030),
    }[size]


@pytest.fixture
def state(models):
    return ClusterState.uniform(2, models, gpu_bytes=72 << 30)


@pytest.fixture(name="llama")
def llama_fixture():
    return _llama


@pytest.fixture
def models():
    return [_llama("a", "7b"), _llama("b", "7b"), _llama("c", "13b"), _llama("d", "70b")]
