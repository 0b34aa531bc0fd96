"""What the controller tests share: a scripted peer on a real ZeroMQ socket that speaks warmserve.protocol as a
worker would (each test scripts how it answers), a child process to stand for a local worker's process, a
controller with fast ticks, and the demo model's description."""

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time

import zmq
import zmq.asyncio

from warmserve import _C
from warmserve import protocol as P
from warmserve.config import ClusterConfig, ControllerConfig, ModelSpec, default_demo_dir
from warmserve.controller.controller import Controller
from warmserve.errors import CancelledError, InvalidArgumentError, ModelStateError, UnknownModelError, WarmServeError
from warmserve.memory import PagePool
from warmserve.policy.config import policy_config_from_dict
from warmserve.worker.core import WorkerCore
from warmserve.worker.server import WorkerServer

MODEL = "llama-20m"


def demo_path(name: str = MODEL) -> str:
    """The demo checkpoint's directory, written first if it is not there. Its stamp is written last, so a
    checkpoint another test process is writing right now is not taken half-written (config.json comes before
    the tokenizer's files); importing the writer costs torch, hence the look first."""
    path = os.path.join(default_demo_dir(), name)
    if not os.path.isfile(os.path.join(path, ".warmserve-demo")):
        from warmserve.engine.demo import write_demo_models

        path = write_demo_models(None, [name])[name]
    return path


class Peer:
    """A scripted worker: answers Prewarm/Activate/GetStats/Generate as told, records what it got. Its answers
    are a real worker's (worker/core.py): Evicted and Deactivated, and the activations core._activatable refuses
    are refused (a second instance unless every one is shared, a tensor-parallel shard beside any other, a running
    model again); a Deactivate of an instance it does not run, and an Evict of one it runs, are refused."""

    def __init__(self, endpoint: str, wid: str = "host-1-cpu0", fail_prewarm: bool = False, tokens=(5, 6, 7),
                 curve=None, pid: int = 1, device: str = "cpu", capacity_bytes: int = 1 << 30, start_id: str = ""):
        self.ctx = zmq.asyncio.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        if curve is not None:  # (server public key, own public key, own secret key)
            self.sock.curve_serverkey, self.sock.curve_publickey, self.sock.curve_secretkey = curve
        self.sock.setsockopt(zmq.ROUTING_ID, wid.encode())
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.wid, self.fail_prewarm, self.tokens, self.pid, self.device = wid, fail_prewarm, tokens, pid, device
        self.capacity_bytes = capacity_bytes  # its pool, as its Hello says
        self.start_id = start_id  # in its Hello and heartbeats, as a worker's link says it ("": not said)
        self.got: list = []
        self.silent = False
        self.hold_generate = False
        self.hold_activate = False
        self.instances: dict[str, tuple[bool, str]] = {}  # running: name -> (shared, group_id)
        self.task = asyncio.get_running_loop().create_task(self.run())
        self.beats = asyncio.get_running_loop().create_task(self.beat())

    async def beat(self):
        while True:  # a worker's heartbeats; a silent peer stops them
            await asyncio.sleep(0.05)
            if not self.silent:
                await self.send(P.Heartbeat(time_s=time.time(), start_id=self.start_id))

    async def send(self, msg):
        await self.sock.send(P.encode(msg))

    def hello(self) -> P.Hello:
        return P.Hello(worker_id=self.wid, device=self.device, pid=self.pid, capacity_bytes=self.capacity_bytes,
                       page_bytes=2 << 20, protocol_version=P.PROTOCOL_VERSION, start_id=self.start_id)

    async def run(self):
        await self.send(self.hello())
        while True:
            msg = P.decode_request(await self.sock.recv())
            self.got.append(msg)
            if not self.silent:
                await self.handle(msg)

    async def handle(self, msg):
        """Answer one request (messages are handled one at a time, in order, as a worker's main thread does)."""
        if isinstance(msg, P.GetStats):
            await self.send(P.Stats(id=msg.id, worker_id=self.wid, device="cpu", pid=self.pid, uptime_s=1.0,
                                    pool={"page_bytes": 2 << 20, "total_bytes": 1 << 30, "free_bytes": 1 << 30},
                                    models=[], in_flight=0, instances=[  # what it runs, as a worker's do
                                        P.WorkerInstance(name=n, in_flight=0, shared=shared, group_id=g)
                                        for n, (shared, g) in self.instances.items()]))
        elif isinstance(msg, P.Prewarm):
            if self.fail_prewarm:
                await self.send(P.Error.of(msg.id, WarmServeError("disk on fire")))
            else:
                await self.send(P.Prewarmed(id=msg.id, name=msg.name, weight_bytes=1, pages=1, max_context=2048,
                                            load_s=0.0))
        elif isinstance(msg, P.Activate) and not self.hold_activate:
            if (refused := self.refusal(msg)) is not None:
                await self.send(P.Error.of(msg.id, refused))
                return
            self.instances[msg.name] = (msg.shared, msg.group_id)
            await self.send(P.Activated(id=msg.id, name=msg.name, kv_blocks=8, activate_s=0.0, copied_bytes=0))
        elif isinstance(msg, P.Deactivate):
            if self.instances.pop(msg.name, None) is None:
                await self.send(P.Error.of(msg.id, ModelStateError(f"model {msg.name!r} is not running")))
            else:
                await self.send(P.Deactivated(id=msg.id, name=msg.name, aborted=0))
        elif isinstance(msg, P.Evict):
            if msg.name in self.instances:
                await self.send(P.Error.of(msg.id, ModelStateError(f"model {msg.name!r} is running; deactivate it "
                                                                   "before evicting")))
            else:
                await self.send(P.Evicted(id=msg.id, name=msg.name, freed_bytes=2 << 20))
        elif isinstance(msg, P.LeaveGroup):  # the group's instances are closed with it
            for name in [n for n, (_, g) in self.instances.items() if g and g == msg.group_id]:
                del self.instances[name]
            await self.send(P.Ok(id=msg.id))
        elif isinstance(msg, P.Shutdown):
            self.instances.clear()
            await self.send(P.Ok(id=msg.id))
        elif isinstance(msg, P.SetKvTarget):  # answered as a worker does: the instance's KV after the change
            await self.send(P.KvTargetSet(id=msg.id, model=msg.model, kv=P.KvStats(
                kv_blocks_total=8, kv_blocks_mapped=msg.free_blocks, kv_blocks_free=msg.free_blocks,
                kv_free_target=msg.free_blocks, block_tokens=256)))
        elif isinstance(msg, P.HostGroupStore):
            await self.send(P.GroupStoreHosted(id=msg.id, port=29999))
        elif isinstance(msg, P.JoinGroup):
            await self.send(P.GroupJoined(id=msg.id, group_id=msg.group_id, setup_s=0.001))
        elif isinstance(msg, P.Abort):
            await self.send(P.Ok(id=msg.id))
        elif isinstance(msg, P.Generate) and not self.hold_generate:
            for t in self.tokens[:-1]:
                await self.send(P.Tokens(id=msg.id, token_ids=[t]))
            await self.send(P.Tokens(id=msg.id, token_ids=[self.tokens[-1]], finished=True, finish_reason="length"))

    def refusal(self, msg: P.Activate) -> WarmServeError | None:
        """Why a real worker refuses this Activate of a prewarmed model (core._activatable, tp._activate_shard),
        or None."""
        if msg.name in self.instances:
            return ModelStateError(f"model {msg.name!r} is running; only a prewarmed model can be activated")
        if msg.group_id and msg.shared:
            return InvalidArgumentError(f"{msg.name!r} is a tensor-parallel shard: it runs alone, not shared")
        exclusive = [n for n, (shared, _) in self.instances.items() if not shared]
        if self.instances and (not msg.shared or exclusive or msg.group_id):
            return ModelStateError(f"worker {self.wid} already runs {sorted(self.instances)}; deactivate it first")
        return None

    def close(self):
        self.task.cancel()
        self.beats.cancel()
        self.sock.close(0)


class GroupPeer(Peer):
    """As a real worker: an Activate in a group it never joined is refused (worker/tp_groups.py, GroupTable.get)."""

    def __init__(self, *a, **k):
        self.joined = set()
        super().__init__(*a, **k)

    async def send(self, msg):
        if isinstance(msg, P.GroupJoined):
            self.joined.add(msg.group_id)
        if isinstance(msg, P.Activated):
            act = next(m for m in reversed(self.got) if isinstance(m, P.Activate) and m.id == msg.id)
            if act.group_id and act.group_id not in self.joined:
                self.instances.pop(act.name, None)  # refused: nothing runs
                msg = P.Error.of(msg.id, ModelStateError(f"this worker is not in group {act.group_id!r}"))
        await super().send(msg)


class TablePeer(Peer):
    """A scripted worker that keeps a worker's model table as worker/core.py does: name -> "loading", "prewarmed"
    or "running". A Prewarm of a model it holds is refused; an Evict of a running model is refused (deactivate it
    first) and of a loading one cancels the load (its Prewarm is answered with CancelledError); an Activate of a
    model that is not prewarmed, one a real worker cannot run beside its other instances (Peer.refusal), and a
    Deactivate of one that is not running are refused.

    ``load_s``: how long a load takes, on the side (None: it never ends: a hung load). ``activate_s``: how long
    each of the next activations takes, one entry each; a real worker activates on its main thread, so the
    messages after an Activate wait for it (this peer reads nothing meanwhile)."""

    def __init__(self, *a, load_s: float | None = 0.0, activate_s=(), **k):
        self.models: dict[str, str] = {}
        self.load_s, self.activate_s = load_s, list(activate_s)
        self._loads: dict[str, tuple] = {}  # name -> (the Prewarm's id, its timer)
        super().__init__(*a, **k)

    async def handle(self, msg):
        name = getattr(msg, "name", None)
        state = self.models.get(name)
        if isinstance(msg, P.Prewarm):
            if state is not None:
                await self.send(P.Error.of(msg.id, ModelStateError(f"model {name!r} is already {state}")))
                return
            self.models[name] = "loading"
            later = None if self.load_s is None else asyncio.get_running_loop().call_later(
                self.load_s, self._loaded, msg)
            self._loads[name] = (msg.id, later)
        elif isinstance(msg, P.Evict):
            if state is None:
                await self.send(P.Error.of(msg.id, UnknownModelError(f"model {name!r} is not on this worker")))
            elif state == "running":
                await self.send(P.Error.of(msg.id, ModelStateError(f"model {name!r} is running; deactivate it "
                                                                   "before evicting")))
            else:
                if state == "loading":
                    pid, later = self._loads.pop(name)
                    if later is not None:
                        later.cancel()
                    await self.send(P.Error.of(pid, CancelledError(f"prewarm of {name!r} was cancelled by an Evict")))
                del self.models[name]
                await self.send(P.Evicted(id=msg.id, name=name, freed_bytes=2 << 20))
        elif isinstance(msg, P.Activate):
            if state != "prewarmed":
                await self.send(P.Error.of(msg.id, ModelStateError(f"model {name!r} is {state}")))
                return
            if (refused := self.refusal(msg)) is not None:
                await self.send(P.Error.of(msg.id, refused))
                return
            if self.activate_s:
                await asyncio.sleep(self.activate_s.pop(0))
            self.models[name] = "running"
            self.instances[name] = (msg.shared, msg.group_id)
            await self.send(P.Activated(id=msg.id, name=name, kv_blocks=8, activate_s=0.0, copied_bytes=0))
        elif isinstance(msg, P.Deactivate):
            if state != "running":
                await self.send(P.Error.of(msg.id, ModelStateError(f"model {name!r} is not running")))
                return
            self.models[name] = "prewarmed"
            del self.instances[name]
            await self.send(P.Deactivated(id=msg.id, name=name, aborted=0))
        else:
            await super().handle(msg)
            if isinstance(msg, P.Shutdown):  # the worker closes everything
                self.models.clear()
            elif isinstance(msg, P.LeaveGroup):  # the group's instances closed: their models stay prewarmed
                for n in [n for n, st in self.models.items() if st == "running" and n not in self.instances]:
                    self.models[n] = "prewarmed"

    def _loaded(self, msg: P.Prewarm) -> None:
        if self._loads.get(msg.name, (None,))[0] == msg.id:
            del self._loads[msg.name]
            self.models[msg.name] = "prewarmed"
            asyncio.get_running_loop().create_task(self.send(P.Prewarmed(
                id=msg.id, name=msg.name, weight_bytes=1, pages=1, max_context=2048, load_s=self.load_s)))


class HoldingPeer(TablePeer):
    """Refuses the Prewarm of a model it holds as a real worker does: ModelStateError naming the model and its
    state."""

    async def handle(self, msg):
        if isinstance(msg, P.Prewarm) and msg.name in self.models:
            state = self.models[msg.name]
            await self.send(P.Error.of(msg.id, ModelStateError(
                f"model {msg.name!r} is already {state} on worker {self.wid}; evict it first", model=msg.name,
                state=state)))
            return
        await super().handle(msg)


class WorkerProc(subprocess.Popen):
    """A child process standing for a local worker, whose scripted peer goes silent when it is killed, as a
    worker's socket closes with it."""

    peer: Peer | None = None

    def kill(self):
        if self.peer is not None:
            self.peer.close()
        super().kill()


class StuckProc(WorkerProc):
    """A local worker's process that SIGKILL does not end until ``release()`` (in uninterruptible sleep: stuck in
    the GPU driver, or a read from a hung network mount). Its scripted peer goes silent at the kill."""

    stuck = True

    def kill(self):
        if not self.stuck:
            super().kill()
        elif self.peer is not None:
            self.peer.close()

    def release(self):
        self.stuck = False
        if self.poll() is None:
            subprocess.Popen.kill(self)


def sleeper(cls=WorkerProc) -> WorkerProc:
    """A real child process (it sleeps) standing for a local worker's; its scripted Peer speaks for it."""
    return cls([sys.executable, "-c", "import time; time.sleep(60)"], stdin=subprocess.DEVNULL)


def exits_on_shutdown(peer: Peer, proc) -> Peer:
    """``peer`` ends the sleeper ``proc`` it speaks for once it has answered Shutdown, as a worker's process exits
    then: a close or a planned replacement goes on at once instead of waiting 5 s (REAP_WAIT_S, DRAINED_EXIT_WAIT_S
    in controller/restarts.py) for a sleeper that never exits (a test of that wait itself keeps a plain Peer)."""
    handle = peer.handle

    async def handle_then_exit(msg):
        await handle(msg)
        if isinstance(msg, P.Shutdown):
            proc.terminate()

    peer.handle = handle_then_exit
    return peer


def add_local_worker(c: Controller, wid: str, spawn) -> None:
    """Make ``spawn`` the starter of local worker ``wid``'s process (what a restart or a replacement calls) and
    start its first process, as launch does."""
    c.local_spawn[wid.encode()] = spawn
    c.local_procs[wid.encode()] = spawn()


def scripted_local_worker(c: Controller, endpoint: str, wid: str, exits: bool = False,
                          instead=None) -> list[WorkerProc]:
    """Local worker ``wid`` whose every process (the first, and each restart or replacement) is a sleeper with a
    scripted Peer of its own (one that ends it on Shutdown with ``exits``: ``exits_on_shutdown``); returns its
    processes, the first started already. ``instead(n)``, for the n-th start (1: the first), may return a process
    of its own to use with no peer (one that exits, or never speaks) or raise, as a failing starter does; None
    leaves the scripted sleeper."""
    procs: list[WorkerProc] = []
    starts = itertools.count(1)

    def spawn():
        p = instead and instead(next(starts))
        if p is not None:
            procs.append(p)
            return p
        p = sleeper()
        p.peer = Peer(endpoint, wid, pid=p.pid)
        if exits:
            exits_on_shutdown(p.peer, p)
        procs.append(p)
        return p

    add_local_worker(c, wid, spawn)
    return procs


async def peers_in_order(c: Controller, endpoint: str, *wids: str, peer_cls=None, into=None) -> list[Peer]:
    """Peers admitted one after another, so that the i-th gets GPU id i. Two peers started together say Hello over
    two sockets, which the controller may read in either order; a test that expects the first one to be rank 0 of
    a group then waits for a message that goes to the other (a CI run hung so). ``into``: the list to put them in
    as each is made, so that a caller can close those made before a failed admission."""
    peer_cls = peer_cls or Peer
    peers = [] if into is None else into
    for i, wid in enumerate(wids[:-1]):
        peers.append(peer_cls(endpoint, wid))
        for _ in range(250):  # admitted (ready), not c.wait_for_workers: that one also starts the policy
            if sum(w.ready for w in c.hub.workers.values()) > i:
                break
            await asyncio.sleep(0.02)
    peers.append(peer_cls(endpoint, wids[-1]))
    await c.wait_for_workers(len(wids), 5)
    assert [c.by_gpu[g].ident.decode() for g in range(len(wids))] == list(wids)
    return peers


@contextlib.asynccontextmanager
async def admitted(c: Controller, *wids: str, peer_cls=None, **peer_kw):
    """``c`` started, with one scripted peer ``peer_cls(endpoint, wid, **peer_kw)`` per worker id (one,
    host-1-cpu0, by default) admitted in that order, so that the i-th gets GPU id i, and its policy running; yields
    the peers. On the way out, whatever the test raised, the controller closes with no drain, then each peer."""
    ep = await c.start()
    peers: list[Peer] = []
    try:
        await peers_in_order(c, ep, *(wids or ("host-1-cpu0",)),
                             peer_cls=functools.partial(peer_cls or Peer, **peer_kw), into=peers)
        yield peers
    finally:
        await c.close(drain=False)
        for p in peers:
            p.close()


async def stop_ticks(c: Controller) -> None:
    """Stop the policy's ticks, for a test that applies the driver's actions itself; a tick under way ends first."""
    c.policy_running = False
    await asyncio.sleep(0.1)


def tp2(model):
    """The demo model described as tensor-parallel over 2 GPUs."""
    return dataclasses.replace(model, spec=ModelSpec(path=model.spec.path, name=model.name, tp=2))


def two_models(model, policy, pc=None, **cc):
    """Models a (tp=1) and b (tp=2) of the demo checkpoint."""
    a = dataclasses.replace(model, spec=ModelSpec(path=model.spec.path, name="a"))
    b = dataclasses.replace(model, spec=ModelSpec(path=model.spec.path, name="b", tp=2))
    cc = ControllerConfig(**{"tick_s": 0.05, "heartbeat_interval_s": 0.05, "worker_timeout_s": 1.5, "policy": policy,
                             "policy_config": policy_config_from_dict({"window_s": 30, **(pc or {})}), **cc})
    return Controller(ClusterConfig(models=(a.spec, b.spec), controller=cc), [a, b])


def make_controller(model, policy_options=(), worker_page_bytes: int = 2 << 20, engine=None, **ctl) -> Controller:
    pc = policy_config_from_dict({"window_s": 30, **dict(policy_options)})
    # Peers beat from this process's event loop, which CI load can hold up for a while: 1.5 s of silence before a
    # worker is lost leaves a margin that 0.5 s did not; the tests that silence a peer wait for it.
    cc = ControllerConfig(**{"tick_s": 0.05, "heartbeat_interval_s": 0.05, "worker_timeout_s": 1.5,
                             "policy_config": pc, **ctl})
    extra = {} if engine is None else {"engine": engine}  # an EngineConfig: what every Activate carries
    return Controller(ClusterConfig(models=(model.spec,), controller=cc, worker_page_bytes=worker_page_bytes, **extra),
                      [model])


@contextlib.contextmanager
def in_process_worker(endpoint: str, pool_bytes: int, worker_id: str = "host-1-cpu0"):
    """A real WorkerCore and WorkerServer over ZeroMQ, serving the controller at ``endpoint`` from a thread of this
    process, so that a test can inject faults into its pool (``_C._debug_fail_after``); on the way out the faults
    are reset and the worker stopped."""
    pool = PagePool(pool_bytes, prefault=False, page_bytes=2 << 20)
    core = WorkerCore(pool, device="cpu", worker_id=worker_id, emit=lambda peer, msg: None)
    srv = WorkerServer(core, controller=endpoint, heartbeat_interval_s=0.05)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield core
    finally:
        _C._debug_fail_after("protect_hard", 0)
        core.stopping = True
        t.join(10)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


async def collect(req):
    out = []
    async for t in req:
        out += t
    return out


async def until(cond, timeout_s: float, step_s: float = 0.02) -> bool:
    """Whether ``cond()`` held within ``timeout_s``."""
    for _ in range(int(timeout_s / step_s)):
        if cond():
            return True
        await asyncio.sleep(step_s)
    return cond()


def stop(procs) -> None:
    """Kill and reap ``procs``, and close the scripted peer of each: one whose process had exited already (ended
    on Shutdown, or by a kill the test made) kept its socket open, which the garbage collector found in a later
    test (a ResourceWarning there)."""
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
        if getattr(p, "peer", None) is not None:
            p.peer.close()


class HttpController:
    """What the HTTP layer (controller/api.py) asks of the controller, for tests of that layer alone: one model,
    its metrics, the requests submitted (``submit`` makes each a Req that ends, when aborted, as ``on_abort``
    says)."""

    def __init__(self, model):
        from warmserve.controller.metrics import ControllerMetrics

        self.m, self.metrics, self.submitted = model, ControllerMetrics(), []

    def health(self):
        return {"ok": True, "workers": 1}

    def model_names(self):
        return [MODEL]

    def model(self, name):
        return self.m

    def on_abort(self, req) -> None:
        """How an aborted request ends here: not counted (a subclass counts it as Controller._abort does)."""

    async def submit(self, model, ids, sampling, siblings=()):
        from warmserve.controller.requests import Req

        r = Req(len(self.submitted) + 1, model, ids, sampling, timeout_s=60.0)
        r._abort_cb = self.on_abort
        self.submitted.append(r)
        return r


def byte_ids(tok) -> dict[int, int]:
    """A token for each single byte the vocabulary has one for (byte -> token id)."""
    ids: dict[int, int] = {}
    for i in range(tok.vocab_size):
        b = tok.token_bytes(i)
        if len(b) == 1:
            ids.setdefault(b[0], i)
    return ids


async def small_send_buffer(request, response) -> None:
    """An aiohttp ``on_response_prepare`` hook: the answer's socket sends through a buffer as small as the kernel
    allows, so a client that stops reading fills it (and the transport's) at once."""
    sock = request.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


def raw_completion(port: int, body: dict) -> socket.socket:
    """A POST /v1/completions of ``body``, sent from a socket whose receive buffer is as small as the kernel
    allows; nothing is read from it."""
    data = json.dumps(body).encode()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(data) + data)
    return s


def curve_dir(tmp_path):
    """A controller's --curve-dir: its server key pair (the secret one private) and an empty workers/ folder."""
    import zmq.auth

    d = tmp_path / "keys"
    (d / "workers").mkdir(parents=True)
    zmq.auth.create_certificates(str(d), "server")
    os.chmod(d / "server.key_secret", 0o600)
    return d
