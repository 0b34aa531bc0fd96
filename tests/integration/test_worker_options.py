"""A `warmserve worker` process started with CURVE and engine-limit flags, reached by the package's own clients:
WorkerClient and AsyncWorkerClient take the CURVE certificate files; the worker's --max-kv-blocks applies to an
activation that brings no limits of its own."""

import asyncio

import pytest
import zmq.auth

from warmserve import errors
from warmserve import protocol as P
from warmserve.worker.client import AsyncWorkerClient, WorkerClient
from warmserve.worker.spawn import spawn_local_worker

MODEL = "llama-20m"


@pytest.fixture(scope="module")
def curve_worker(tmp_path_factory):
    from warmserve.engine.demo import write_demo_models

    path = write_demo_models(None, [MODEL])[MODEL]
    tmp = tmp_path_factory.mktemp("curve")
    keys, allowed = tmp / "keys", tmp / "clients"
    keys.mkdir()
    allowed.mkdir()
    worker_public, worker_secret = zmq.auth.create_certificates(str(keys), "worker")
    zmq.auth.create_certificates(str(allowed), "client")
    proc, endpoint = spawn_local_worker(
        "cpu", 0.25, 1, log_path=str(tmp / "worker.log"),
        extra_args=("--curve-secret-key", worker_secret, "--curve-clients-dir", str(allowed),
                    "--max-kv-blocks", "5", "--max-num-seqs", "1"))
    yield endpoint, path, worker_public, str(allowed / "client.key_secret")
    proc.kill()
    proc.wait()


def test_clients_with_curve_keys_are_served_and_the_worker_engine_flags_apply(curve_worker):
    endpoint, path, worker_public, client_secret = curve_worker
    c = WorkerClient(endpoint, curve_server_key=worker_public, curve_secret_key=client_secret)
    try:
        c.prewarm(path, MODEL)
        act = c.activate(MODEL)  # no limits of its own: the worker's flags apply
        assert act.kv_blocks == 5
        toks = [t for ev in c.generate(MODEL, [11, 12, 13], P.SamplingParams(max_tokens=3)) for t in ev.token_ids]
        assert len(toks) == 3
    finally:
        c.close()

    async def main():
        a = AsyncWorkerClient(endpoint, curve_server_key=worker_public, curve_secret_key=client_secret)
        try:
            st = await a.stats()
            assert [i.name for i in st.instances] == [MODEL] and st.instances[0].kv.kv_blocks_total == 5
        finally:
            await a.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_client_without_the_keys_gets_nothing_through(curve_worker):
    endpoint, _, worker_public, _ = curve_worker
    plain = WorkerClient(endpoint, worker_timeout_s=1.0)
    try:
        with pytest.raises((errors.TimeoutError_, errors.WorkerLostError)):
            plain.stats(timeout_s=1.5)
    finally:
        plain.close()
    with pytest.raises(errors.InvalidArgumentError, match="curve_secret_key"):
        WorkerClient(endpoint, curve_server_key=worker_public)
    with pytest.raises(errors.InvalidArgumentError, match="curve_server_key"):
        WorkerClient(endpoint, curve_secret_key=worker_public)


def test_bad_engine_flags_stop_the_worker_before_it_starts(tmp_path):
    with pytest.raises(errors.WarmServeError, match="max_num_seqs must be an integer >= 0"):
        spawn_local_worker("cpu", 0.05, 1, ready_timeout_s=60, extra_args=("--max-num-seqs", "-1"),
                           log_path=str(tmp_path / "worker.log"))


def test_a_worker_with_8_mib_pages_serves_and_counts_its_kv_pages(tmp_path):
    from warmserve.engine.demo import write_demo_models

    path = write_demo_models(None, [MODEL])[MODEL]
    proc, endpoint = spawn_local_worker("cpu", 0.25, 1, log_path=str(tmp_path / "worker.log"),
                                        extra_args=("--page-mib", "8"))
    c = WorkerClient(endpoint)
    try:
        assert c.stats().pool.page_bytes == 8 << 20
        c.prewarm(path, MODEL)
        c.activate(MODEL)
        toks = [t for ev in c.generate(MODEL, list(range(11, 311)), P.SamplingParams(max_tokens=3))
                for t in ev.token_ids]
        assert len(toks) == 3
        st = c.stats()
        inst, = st.instances
        # llama-20m's KV blocks are 2 MiB: four to an 8 MiB page
        assert inst.kv_pages == -(-inst.kv.kv_blocks_mapped // 4) >= 1
        assert st.pool.pages_by_tag[f"instance:{MODEL}"] == st.models[0].pages + inst.kv_pages
    finally:
        c.close()
        proc.kill()
        proc.wait()


def test_a_page_size_that_is_not_a_multiple_of_2_mib_stops_the_worker_before_it_starts(tmp_path):
    with pytest.raises(errors.WarmServeError, match="--page-mib must be a positive multiple of 2, got 3"):
        spawn_local_worker("cpu", 0.05, 1, ready_timeout_s=60, extra_args=("--page-mib", "3"),
                           log_path=str(tmp_path / "worker.log"))


def test_a_cluster_starts_its_workers_with_the_configured_page_size(tmp_path_factory):
    import serving

    with serving.demo_cluster(tmp_path_factory, models=(MODEL,), cpu_workers=1, cpu_worker_memory_bytes=512 << 20,
                              worker_page_bytes=8 << 20) as c:
        out = c.generate(MODEL, list(range(5, 600)), max_tokens=4, temperature=0)
        assert out.completion_tokens == 4
        workers = c.stats()["workers"]
        assert [w["pool"]["page_bytes"] for w in workers] == [8 << 20]
        # The policy counts the weights in the workers' pages (llama-20m's 74 MiB hold 80 MiB of 8 MiB pages).
        assert c.controller.driver.state.models[MODEL].shard_bytes == 80 << 20


def test_a_page_size_that_is_not_a_multiple_of_2_mib_is_refused_in_the_cluster_config():
    from warmserve.config import ClusterConfig

    with pytest.raises(ValueError, match="worker_page_bytes must be a positive multiple of 2 MiB"):
        ClusterConfig(worker_page_bytes=3 << 20)
