"""The default CPU worker pool (cpu_worker_memory_bytes = 0) holds the largest model and KV room at any valid page
size. Found in review: it ignored the page size, so with pages of 768 MiB or more check_weights_fit refused even
the smallest demo model, and its message asked for the default that had failed."""

import pytest

from warmserve.config import ClusterConfig, ModelSpec
from warmserve.controller.launch import check_weights_fit, cpu_worker_memory_bytes
from warmserve.controller.models import controller_model
from warmserve.engine.demo import write_demo_models


@pytest.mark.parametrize("page_mib", [2, 256, 512, 768, 1024, 2048])
def test_the_default_pool_fits_the_models_at_any_page_size(page_mib):
    path = write_demo_models(None, ("llama-20m",))["llama-20m"]
    models = [controller_model(ModelSpec(path=path))]
    cfg = ClusterConfig(worker_page_bytes=page_mib << 20)
    pool = cpu_worker_memory_bytes(cfg, models)
    check_weights_fit(models, pool, cfg.worker_page_bytes)
    assert pool % cfg.worker_page_bytes == 0 or pool >= 1 << 30
    assert pool == 1 << 30 if page_mib <= 256 else pool > 1 << 30  # 2 MiB-256 MiB pages: the default as before
