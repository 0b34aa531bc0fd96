"""Real `warmserve worker` processes on CPU, driven over ZeroMQ: prewarming, zero-copy switching, eviction, KV
reservation while generating, bad input, and liveness."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time

import msgspec
import pytest

from warmserve import errors
from warmserve import protocol as P
from warmserve.worker import AsyncWorkerClient, ModelStateError, WorkerClient, spawn_local_worker

GREEDY = P.SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
# One more architecture beside the two small demo models: a deep, narrow Llama whose KV block is one page.
TINY = dict(model_type="llama", hidden_size=256, intermediate_size=512, num_hidden_layers=16,
            num_attention_heads=4, num_key_value_heads=1)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    from warmserve.engine.demo import SMALL_MODELS, DemoSpec, config_dict, write_checkpoint, write_demo_models

    # The demo models from the shared demo folder, as the other tests use them (written once, then reused); only
    # the test's own architecture is written here.
    paths = write_demo_models(None, SMALL_MODELS)
    paths["tiny-deep"] = write_checkpoint(str(tmp_path_factory.mktemp("models")), "tiny-deep",
                                          config_dict(DemoSpec(**TINY)))
    return paths


@pytest.fixture(scope="module")
def worker_proc(tmp_path_factory):
    proc, endpoint = spawn_local_worker("cpu", memory_gib=0.5, threads=1, peer_timeout_s=5.0,
                                        log_path=str(tmp_path_factory.mktemp("worker") / "worker.log"))
    yield proc, endpoint
    if proc.poll() is None:
        with WorkerClient(endpoint) as c:
            c.shutdown(timeout_s=10)
        assert proc.wait(timeout=10) == 0
    else:
        pytest.fail(f"worker died during the tests with code {proc.returncode}; log: {proc.log_path}")


@pytest.fixture(scope="module")
def spare_worker(tmp_path_factory):
    """A second worker (0.25 GiB) for the tests that pause or kill one, started once for them: a call returns it
    while it lives (a test that pauses it leaves it serving), else a new one, so the order of the tests does not
    matter. Killed at the end."""
    procs = []

    def get():
        if not procs or procs[-1][0].poll() is not None:
            log = tmp_path_factory.mktemp("spare") / "worker.log"
            procs.append(spawn_local_worker("cpu", memory_gib=0.25, threads=1, log_path=str(log)))
        return procs[-1]

    yield get
    for proc, _ in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.wait(5)


@pytest.fixture
def client(worker_proc):
    """A client on the shared worker; whatever a test left running or prewarmed is cleaned up after it."""
    c = WorkerClient(worker_proc[1])
    yield c
    st = c.stats()
    for inst in st.instances:
        c.deactivate(inst.name)
    for m in st.models:
        c.evict(m.name)
    c.close()


def pages(stats: P.Stats, name: str) -> list[int]:
    return next(m.physical_pages for m in stats.models if m.name == name)


def test_worker_is_prewarmed_before_any_model_is_asked(worker_proc, client):
    proc, endpoint = worker_proc
    hello = proc.hello
    assert hello.pid == proc.pid and hello.endpoint == endpoint and hello.device == "cpu"
    st = client.stats()
    assert st.pid == proc.pid and st.models == [] and st.instances == []
    # Every page of the pool exists already, all free.
    assert st.pool.total_bytes == hello.capacity_bytes == 256 * (2 << 20)
    assert st.pool.free_bytes == st.pool.total_bytes


def test_three_models_prewarmed_switch_with_no_copy(client, models):
    events = []
    done = {n: client.prewarm(p, on_progress=events.append) for n, p in models.items()}
    assert sorted(done) == ["llama-20m", "qwen2-30m", "tiny-deep"]
    assert events and events[-1].loaded_bytes == events[-1].total_bytes
    st0 = client.stats(pages=True)
    assert {m.name: m.state for m in st0.models} == dict.fromkeys(done, "prewarmed")
    used = st0.pool.total_bytes - st0.pool.free_bytes
    assert used >= sum(d.weight_bytes for d in done.values())
    all_pages = [p for m in st0.models for p in m.physical_pages]
    assert len(all_pages) == len(set(all_pages)) == sum(d.pages for d in done.values())
    for name, d in done.items():  # the pool's own accounting, by slot tag
        assert st0.pool.pages_by_tag[f"prewarm:{name}"] == d.pages

    outputs = {}
    for name in ("llama-20m", "qwen2-30m", "tiny-deep"):
        act = client.activate(name)
        assert act.copied_bytes == 0, f"activating {name} copied {act.copied_bytes} bytes"
        outputs[name], last = client.generate(name, [11, 12, 13, 14, 15], GREEDY).collect()
        assert len(outputs[name]) == 12 and last.num_prompt_tokens == 5
        st = client.stats(pages=True)
        assert [i.name for i in st.instances] == [name]
        # The running instance's slot holds its weights' pages and the KV pages mapped after them, nothing else.
        assert st.pool.pages_by_tag[f"instance:{name}"] == done[name].pages + st.instances[0].kv_pages
        assert f"prewarm:{name}" not in st.pool.pages_by_tag
        for m in st0.models:  # every model's weights stay on the very same physical pages
            assert pages(st, m.name) == m.physical_pages
        assert st.pool.bytes_loaded == st0.pool.bytes_loaded, "activation wrote into the pool"
        client.deactivate(name)
    assert len({tuple(v) for v in outputs.values()}) == 3  # three different models answered

    # Greedy output is reproducible after switching back.
    client.activate("llama-20m")
    assert client.generate("llama-20m", [11, 12, 13, 14, 15], GREEDY).collect()[0] == outputs["llama-20m"]


def test_evict_gives_pages_back_at_once(client, models):
    free0 = client.stats().pool.free_bytes
    d = client.prewarm(models["qwen2-30m"])
    assert client.stats().pool.free_bytes == free0 - d.pages * (2 << 20)
    ev = client.evict("qwen2-30m")
    assert ev.freed_bytes == d.pages * (2 << 20)
    st = client.stats()
    assert st.pool.free_bytes == free0 and st.models == []


def test_kv_shrinks_and_grows_back_while_generating(client, models):
    client.prewarm(models["llama-20m"])
    client.activate("llama-20m", kv_blocks=24)
    stream = iter(client.generate("llama-20m", list(range(1, 40)), P.SamplingParams(max_tokens=60, ignore_eos=True)))
    got = next(stream).token_ids
    client.set_kv_target("llama-20m", 12)
    got += next(stream).token_ids
    free_before = client.stats().pool.free_bytes
    kv = client.set_kv_target("llama-20m", 0).kv
    assert kv.kv_blocks_free == 0 and kv.kv_blocks_used >= 1
    free_shrunk = client.stats().pool.free_bytes
    assert free_shrunk > free_before, "shrinking the KV target gave no page back"
    client.set_kv_target("llama-20m", 6)
    for ev in stream:
        got += ev.token_ids
    assert len(got) == 60  # the request ran through both changes
    st = client.stats()
    assert st.instances[0].kv.kv_blocks_free >= 6 and st.pool.free_bytes < free_shrunk


def test_bad_input_gets_typed_errors_and_the_worker_keeps_serving(worker_proc, client, models):
    endpoint = worker_proc[1]
    client.prewarm(models["llama-20m"])
    client.activate("llama-20m")

    with pytest.raises(errors.UnknownModelError):
        client.generate("gpt-17", [1, 2]).collect()
    with pytest.raises(errors.UnknownModelError):
        client.activate("gpt-17")
    with pytest.raises(ModelStateError):
        client.activate("llama-20m")
    with pytest.raises(errors.PromptTooLongError) as ei:
        client.generate("llama-20m", [7] * 2100).collect()
    assert ei.value.prompt_tokens == 2100 and ei.value.max_context == 2048

    # Prewarm copies of the largest model until one does not fit: the error says how much was asked and free.
    d = client.prewarm(models["qwen2-30m"], name="q0")
    n_fit = client.stats().pool.free_bytes // (d.pages * (2 << 20))
    for i in range(1, n_fit + 1):
        client.prewarm(models["qwen2-30m"], name=f"q{i}")
    free = client.stats().pool.free_bytes
    with pytest.raises(errors.OutOfMemoryError) as ei:
        client.prewarm(models["qwen2-30m"], name="one-too-many")
    assert ei.value.free_bytes == free < ei.value.asked_bytes
    assert ei.value.total_bytes == 256 * (2 << 20) and "evict" in str(ei.value)

    # Garbage on the socket: typed errors back, with the request id when one could be read.
    client.send_raw([b"\x00\xffnot msgpack at all"])
    err = client.recv_raw(5.0)
    assert isinstance(err, P.Error) and err.type == "ProtocolError" and err.id == -1
    client.send_raw([msgspec.msgpack.encode({"msg": "Generate", "id": 777, "model": ["x"], "prompt_ids": "y"})])
    err = client.recv_raw(5.0)
    assert (type(err), err.type, err.id) == (P.Error, "ProtocolError", 777)
    client.send_raw([b"two", b"frames"])
    assert client.recv_raw(5.0).type == "ProtocolError"
    # Bytes that are not even ZMTP: the worker drops that connection and carries on.
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(os.urandom(4096))

    ids, last = client.generate("llama-20m", [1, 2, 3], GREEDY).collect()
    assert len(ids) == 12 and last.finish_reason == "length"


def test_async_client_streams_many_requests_at_once(worker_proc, client, models):
    client.prewarm(models["qwen2-30m"])
    client.activate("qwen2-30m")
    prompts = [[i, i + 1, i + 2] for i in range(1, 9)]
    expected = [client.generate("qwen2-30m", p, GREEDY).collect()[0] for p in prompts[:2]]

    async def run():
        async with AsyncWorkerClient(worker_proc[1]) as ac:
            streams = [await ac.generate("qwen2-30m", p, GREEDY) for p in prompts]
            results = await asyncio.gather(*(s.collect() for s in streams))
            st = await ac.stats()
            with pytest.raises(errors.UnknownModelError):
                await (await ac.generate("nope", [1])).collect()
            return results, st

    results, st = asyncio.run(run())
    assert [r[0] for r in results[:2]] == expected  # batched with others, greedy gives the same tokens
    assert all(len(ids) == 12 and last.finished for ids, last in results)
    assert st.in_flight == 0


def test_async_streams_dropped_or_closed_early_are_aborted(worker_proc, client, models):
    """Found in review: an async stream left after its first event ran on to max_tokens on the worker, its events
    piling up in the client. Now the client's next call aborts it; `async with` and close() end one at once."""
    import gc

    client.prewarm(models["llama-20m"])
    client.activate("llama-20m")
    long = P.SamplingParams(max_tokens=1500, ignore_eos=True)

    async def run():
        async with AsyncWorkerClient(worker_proc[1]) as ac:
            s = await ac.generate("llama-20m", [1, 2, 3], long)
            assert (await s.__aiter__().__anext__()).token_ids
            del s
            gc.collect()
            async with await ac.generate("llama-20m", [4, 5], long) as s2:
                assert (await s2.__aiter__().__anext__()).token_ids
            for _ in range(50):
                if (await ac.stats()).in_flight == 0:
                    break
                await asyncio.sleep(0.1)
            return (await ac.stats()).in_flight, dict(ac._queues)

    in_flight, queues = asyncio.run(run())
    assert in_flight == 0 and queues == {}


def test_a_client_that_vanishes_has_its_generations_aborted(worker_proc, client, models):
    client.prewarm(models["llama-20m"])
    client.activate("llama-20m")
    gone = WorkerClient(worker_proc[1])
    stream = iter(gone.generate("llama-20m", [1, 2, 3], P.SamplingParams(max_tokens=1500, ignore_eos=True)))
    next(stream)
    gone.close()  # no Abort: the socket just disappears
    deadline = time.monotonic() + 8.0  # the worker's peer timeout is 5 s
    while client.stats().in_flight and time.monotonic() < deadline:
        time.sleep(0.1)
    st = client.stats()
    assert st.in_flight == 0 and st.instances[0].kv.kv_blocks_used == 0


def test_a_paused_worker_is_lost_while_silent_and_served_again_once_heard(spare_worker):
    """Found in review: the async client, once it had reported a worker lost, refused every later call even after
    the worker was heard again (the sync client recovers). SIGSTOP makes it silent; SIGCONT brings it back."""
    proc, endpoint = spare_worker()

    async def pause_and_resume():
        async with AsyncWorkerClient(endpoint, heartbeat_interval_s=0.2, worker_timeout_s=1.0) as ac:
            await ac.stats(timeout_s=10)
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                with pytest.raises(errors.WorkerLostError):
                    await ac.stats(timeout_s=10)
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            deadline = time.monotonic() + 10.0
            while True:
                try:
                    return await ac.stats(timeout_s=2)
                except errors.WorkerLostError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)

    try:
        assert asyncio.run(pause_and_resume()).in_flight == 0
        with WorkerClient(endpoint, worker_timeout_s=2.0) as c:
            assert c.stats().in_flight == 0
    except BaseException:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()  # left as it may be (paused, lost): the next test that asks for one gets a fresh worker
        proc.wait(5)
        raise


def test_a_killed_worker_is_reported_lost_not_waited_for(models, spare_worker):
    proc, endpoint = spare_worker()  # killed here: the next test that asks starts another
    with WorkerClient(endpoint, worker_timeout_s=2.0) as c:
        c.prewarm(models["tiny-deep"])
        c.activate("tiny-deep")
        stream = iter(c.generate("tiny-deep", [1, 2], P.SamplingParams(max_tokens=1000, ignore_eos=True)))
        next(stream)
        os.kill(proc.pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(errors.WorkerLostError):
            for _ in stream:
                pass
        assert time.monotonic() - t0 < 5.0
    proc.wait(5)

    async def ask_the_dead():
        async with AsyncWorkerClient(endpoint, heartbeat_interval_s=0.2, worker_timeout_s=1.0) as ac:
            t0 = time.monotonic()
            with pytest.raises(errors.WorkerLostError):
                await ac.stats(timeout_s=30)
            return time.monotonic() - t0

    assert asyncio.run(ask_the_dead()) < 3.0


def test_spawn_failure_carries_the_workers_own_error(tmp_path):
    with pytest.raises(errors.WorkerLostError, match="--device must be cpu or cuda"):
        spawn_local_worker("tpu:0", memory_gib=0.1, log_path=str(tmp_path / "worker.log"))


def test_worker_joins_a_controller_router_over_curve_and_serves_it(tmp_path):
    """The multi-host path: the worker connects a DEALER to the controller's ROUTER (CURVE-encrypted, only known
    worker keys let in) and says Hello first; then it answers requests and pushes Stats every heartbeat."""
    import subprocess
    import sys

    import zmq
    import zmq.auth
    from zmq.auth.thread import ThreadAuthenticator

    keys = tmp_path / "keys"
    (keys / "workers").mkdir(parents=True)
    server_public, server_secret = zmq.auth.create_certificates(str(keys), "server")
    worker_public, worker_secret = zmq.auth.create_certificates(str(keys / "workers"), "w-test")
    ctx = zmq.Context()
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(keys / "workers"))
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.curve_publickey, router.curve_secretkey = zmq.auth.load_certificate(server_secret)
    router.curve_server = True
    port = router.bind_to_random_port("tcp://127.0.0.1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "warmserve", "worker", "--controller", f"tcp://127.0.0.1:{port}", "--device", "cpu",
         "--memory-gib", "0.1", "--threads", "1", "--worker-id", "w-test", "--heartbeat-interval-s", "0.2",
         "--curve-server-key", server_public, "--curve-secret-key", worker_secret, "--exit-with-parent"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not router.poll(100):
            assert proc.poll() is None and time.monotonic() < deadline, "no Hello from the worker"
        ident, data = router.recv_multipart()
        hello = P.decode_reply(data)
        assert ident == b"w-test" and isinstance(hello, P.Hello) and hello.pid == proc.pid
        assert hello.capacity_bytes == 51 * (2 << 20)
        router.send_multipart([ident, P.encode(P.GetStats(id=5))])
        got = []
        while not any(isinstance(m, P.Stats) and m.id == 5 for m in got):
            assert router.poll(5000)
            got.append(P.decode_reply(router.recv_multipart()[1]))
        # Once it has heard from the controller it pushes Stats (id 0) every heartbeat instead of Hello.
        while True:
            assert router.poll(5000)
            m = P.decode_reply(router.recv_multipart()[1])
            if isinstance(m, P.Stats) and m.id == 0:
                break
            # a Heartbeat too: the link sends one when nothing else went out for an interval (``_heartbeat_due_s``),
            # which the first Stats push can miss by a hair (seen once in CI on a loaded 2-core machine)
            assert isinstance(m, (P.Hello, P.Stats, P.Heartbeat))
        assert m.worker_id == "w-test" and m.pool.total_pages == 51
        router.send_multipart([ident, P.encode(P.Shutdown(id=6))])
        while True:
            assert router.poll(5000)
            m = P.decode_reply(router.recv_multipart()[1])
            if isinstance(m, P.Ok):
                assert m.id == 6
                break
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        router.close()
        auth.stop()
        ctx.term()


def test_a_worker_says_hello_again_to_a_controller_that_came_back(tmp_path):
    """Found in review: once a send to its controller failed (the controller went away), a connected worker only
    pushed Stats, which a new controller drops from a worker it does not know: it never rejoined."""
    import subprocess
    import sys

    import zmq

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    log = tmp_path / "worker.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "warmserve", "worker", "--controller", f"tcp://127.0.0.1:{port}", "--device",
             "cpu", "--memory-gib", "0.1", "--threads", "1", "--worker-id", "w-back", "--heartbeat-interval-s", "0.2",
             "--exit-with-parent"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)

    def first(sock, kind, within_s):
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            assert proc.poll() is None
            if sock.poll(100):
                ident, data = sock.recv_multipart()
                m = P.decode_reply(data)
                if isinstance(m, kind):
                    return ident, m
        raise AssertionError(f"no {kind.__name__} within {within_s} s")

    try:
        ident, _ = first(router, P.Hello, 60)
        router.send_multipart([ident, P.encode(P.GetStats(id=5))])
        first(router, P.Stats, 10)
        router.close()  # the controller goes: the worker's next pushes fail
        # polled, not slept: the first failed push is logged (a WARNING, "cannot send to the controller ...")
        deadline = time.monotonic() + 10
        while "cannot send to" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.05)
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.bind(f"tcp://127.0.0.1:{port}")  # and comes back at the same address
        ident, hello = first(router, P.Hello, 10)
        assert ident == b"w-back" and hello.worker_id == "w-back"
        router.send_multipart([ident, P.encode(P.Shutdown(id=6))])
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        router.close()
        ctx.term()


def test_a_worker_whose_spawner_died_while_it_started_exits(tmp_path):
    """Found in review: a worker took its parent's pid once started (imports, the pool: seconds), so one whose
    spawner was killed meanwhile (`warmserve serve` stopped during start-up) saw pid 1 as its parent and ran for
    ever. Spawners now pass their own pid, and the worker checks it before its imports and its pool (found in a
    later review: it imported torch and served for a moment first)."""
    import subprocess
    import sys

    spawner = ("import os, subprocess, sys; "
               "p = subprocess.Popen([sys.executable, '-m', 'warmserve', 'worker', '--bind', 'tcp://127.0.0.1:0', "
               "'--device', 'cpu', '--memory-gib', '0.05', '--threads', '1', '--exit-with-parent', str(os.getpid())], "
               "stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(sys.argv[1], 'w'), "
               "start_new_session=True); print(p.pid, flush=True)")
    log = tmp_path / "worker.log"
    out = subprocess.run([sys.executable, "-c", spawner, str(log)], capture_output=True, text=True, timeout=60)
    pid = int(out.stdout.split()[0])  # the spawner has exited: its worker is still starting

    def alive() -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(")")[-1].split()[0] != "Z"  # a zombie nobody reaps has exited
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 60
    while alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        assert not alive(), "the worker outlived its spawner"
        said = log.read_text()
        assert "is gone: shutting down" in said and "serving at" not in said, said[-2000:]
    finally:
        if alive():
            os.kill(pid, signal.SIGKILL)
