"""A cluster with nothing to start says so. Found in review: cpu_workers=0 on a machine with no GPU, no devices and
no remote workers was refused as a model whose tp=1 "the widest machine" (0 workers) could not hold, with the advice
to lower its tp."""

import asyncio

import pytest

from warmserve.config import ClusterConfig, ModelSpec
from warmserve.controller.launch import start_cluster, visible_gpus
from warmserve.errors import InvalidArgumentError

from controller_harness import demo_path


@pytest.mark.skipif(visible_gpus() > 0, reason="a GPU would get a worker")
def test_no_cpu_workers_no_devices_and_no_remote_workers_is_refused_before_anything_starts():
    cfg = ClusterConfig(models=(ModelSpec(demo_path()),), cpu_workers=0)
    with pytest.raises(InvalidArgumentError, match="no workers to start: cpu_workers is 0") as e:
        asyncio.run(start_cluster(cfg))
    assert "tp" not in str(e.value)
