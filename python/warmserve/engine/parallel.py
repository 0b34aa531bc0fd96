"""Tensor parallelism for the Llama family: the sharding rules, the per-rank config, and the process-group handle.

A ``tp``-way instance runs one rank per device. Every rank reads its own slice of each tensor straight from the
same Hugging Face checkpoint into its own slot (engine/loader.py, ``load_model(..., tp=, rank=)``), and the ranks
meet in two collectives per layer plus one at each end. The rules, per HF tensor (weights are [out, in], as
``F.linear`` takes them; ``H``, ``KVH``, ``I``, ``V`` are the model's query heads, KV heads, SwiGLU width and
vocabulary, ``D`` the head size):

    tensor                              split                              rank r holds
    q_proj.weight / .bias               column-parallel (dim 0, by head)   query heads [r*H/tp, (r+1)*H/tp)
    k_proj, v_proj .weight / .bias      column-parallel (dim 0, by head)   KV heads [r*KVH/tp, (r+1)*KVH/tp)
    o_proj.weight                       row-parallel (dim 1)               columns of its own query heads
    gate_proj, up_proj .weight / .bias  column-parallel (dim 0)            rows [r*I/tp, (r+1)*I/tp)
    down_proj.weight                    row-parallel (dim 1)               columns [r*I/tp, (r+1)*I/tp)
    o_proj.bias, down_proj.bias         replicated                         added by rank 0 only, before the sum
    embed_tokens, lm_head               vocabulary-parallel (dim 0)        rows [r*Vp, min(V, (r+1)*Vp)),
                                                                           Vp = ceil(V/tp); zero rows pad a
                                                                           short last shard to Vp
    input/post_attention_layernorm,     replicated
    model.norm

Query head j attends with KV head ``j // (H/KVH)``, so giving each rank a contiguous run of H/tp query heads and
KVH/tp KV heads keeps every query head with its KV head on one rank: attention and the paged KV cache are local,
each rank caching only its own KV heads (the per-rank KV block of geometry.kv_block_bytes(..., tp)).

Collectives (``ParallelGroup``): the embedding lookup of a vocabulary shard yields zeros for ids outside it, so an
all-reduce (sum) after it gives every rank the full embedding, exactly; after each row-parallel projection (o and
down) an all-reduce sums the partial products; the head's [n, Vp] logits are all-gathered into [n, V], so every
rank holds the same full logits (bit for bit) and picks the same greedy token (sampled tokens agree when every
rank's request carries the same seed). Whole heads per rank and an even SwiGLU split need ``tp`` to divide
``num_heads``, ``num_kv_heads`` and ``intermediate_size`` (TensorParallelError otherwise); the vocabulary may be
any size. ``tp == 1`` uses none of this: no group, no collective, the single-device code path.

torch.distributed carries the collectives: gloo on CPU, NCCL on CUDA devices. Every rank runs the same requests
through its own Engine, so the ranks' schedulers take the same steps and call the collectives in the same order:

    group = ParallelGroup.init(rank, tp, "10.0.0.1", 29500)      # or ParallelGroup(rank, tp, a_prebuilt_group)
    lm = load_model(path, pool, tp=tp, rank=rank).wait()         # this rank's shard, in its own slot
    lm.bind_group(group)
    engine = Engine(lm)                                          # same add_request/step calls on every rank
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import socket
import threading
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from warmserve.engine.arch import TensorParallelError
from warmserve.engine.config import ModelConfig
from warmserve.errors import InvalidArgumentError

#: How long a collective (and the group's rendezvous) waits for the other ranks before it fails.
DEFAULT_TIMEOUT_S = 60.0
#: Every group is local to one machine (placement never spans servers), so ranks meet on loopback.
LOOPBACK = "127.0.0.1"


def host_store(timeout_s: float = DEFAULT_TIMEOUT_S):
    """A rendezvous store on a free loopback port (``.port``), for the groups whose rank 0 is this process; it
    must outlive their rendezvous. One store serves any number of groups (``ParallelGroup.join`` prefixes).
    Its socket is bound here: TCPStore listens on every interface whatever host it is given (torch 2.13, either
    backend; found in review: any host that reached the machine could read and write the rendezvous keys), and
    takes over a listening socket it is handed (``master_listen_fd``), closing it with itself."""
    sock = socket.create_server((LOOPBACK, 0))
    try:
        store = dist.TCPStore(LOOPBACK, sock.getsockname()[1], is_master=True, wait_for_workers=False,
                              timeout=datetime.timedelta(seconds=timeout_s), master_listen_fd=sock.fileno())
    except BaseException:
        sock.close()
        raise
    sock.detach()  # the store's now
    return store


@dataclass(frozen=True)
class Shard:
    """The part of one checkpoint tensor a rank holds: [start, stop) along ``dim``, padded to ``size`` there."""

    #: 0: rows (output features, vocabulary); 1: columns (input features).
    dim: int
    start: int
    stop: int
    #: Extent along ``dim`` in the slot: stop - start, plus zero padding for the last vocabulary shard.
    size: int

    def shape(self, full: tuple[int, ...]) -> tuple[int, ...]:
        """The shard's shape in the slot, from the tensor's full shape."""
        out = list(full)
        out[self.dim] = self.size
        return tuple(out)

    @property
    def pad(self) -> int:
        """Zero rows after the data (vocabulary padding)."""
        return self.size - (self.stop - self.start)


def valid_tp(cfg: ModelConfig, limit: int = 64) -> list[int]:
    """The tensor-parallel sizes up to ``limit`` that split this model evenly."""
    return [t for t in range(1, limit + 1)
            if cfg.num_heads % t == 0 and cfg.num_kv_heads % t == 0 and cfg.intermediate_size % t == 0]


def shard_config(cfg: ModelConfig, tp: int) -> ModelConfig:
    """The config one rank of a ``tp``-way instance runs: per-rank heads, KV heads and SwiGLU width; the rest,
    the vocabulary included, stays the model's. ``tp == 1`` returns ``cfg`` itself."""
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise InvalidArgumentError(f"tp must be a positive int, not {tp!r}", tp=repr(tp))
    if cfg.tp != 1:
        raise InvalidArgumentError(f"this config is already one of {cfg.tp} shards: shard the model's own config",
                                   tp=cfg.tp)
    if tp == 1:
        return cfg
    sizes = (("num_attention_heads", cfg.num_heads), ("num_key_value_heads", cfg.num_kv_heads),
             ("intermediate_size", cfg.intermediate_size))
    bad = [f"{what} {n}" for what, n in sizes if n % tp]
    if bad:
        raise TensorParallelError(
            f"tp={tp} does not divide {', '.join(bad)}: each rank must hold whole heads, whole KV heads and an equal "
            f"share of the SwiGLU width; use tp in {valid_tp(cfg)}",
            tp=tp, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, intermediate_size=cfg.intermediate_size,
            valid_tp=valid_tp(cfg))
    return dataclasses.replace(cfg, num_heads=cfg.num_heads // tp, num_kv_heads=cfg.num_kv_heads // tp,
                               intermediate_size=cfg.intermediate_size // tp, tp=tp)


def vocab_range(vocab_size: int, tp: int, rank: int) -> tuple[int, int, int]:
    """(first token id, end token id, rows held with padding) of rank's vocabulary shard."""
    per = math.ceil(vocab_size / tp)
    start = min(vocab_size, rank * per)
    return start, min(vocab_size, start + per), per


# Suffix of an HF tensor name -> (dim, which extent it splits).
_RULES = {
    "self_attn.q_proj.weight": (0, "q"), "self_attn.q_proj.bias": (0, "q"),
    "self_attn.k_proj.weight": (0, "kv"), "self_attn.k_proj.bias": (0, "kv"),
    "self_attn.v_proj.weight": (0, "kv"), "self_attn.v_proj.bias": (0, "kv"),
    "self_attn.o_proj.weight": (1, "q"),
    "mlp.gate_proj.weight": (0, "i"), "mlp.gate_proj.bias": (0, "i"),
    "mlp.up_proj.weight": (0, "i"), "mlp.up_proj.bias": (0, "i"),
    "mlp.down_proj.weight": (1, "i"),
}
_VOCAB = ("model.embed_tokens.weight", "lm_head.weight")


def shard_of(name: str, cfg: ModelConfig, tp: int, rank: int) -> Shard | None:
    """What rank ``rank`` of a ``tp``-way instance holds of HF tensor ``name`` (cfg: the model's own config);
    None: the whole tensor (replicated, or tp == 1)."""
    if tp == 1:
        return None
    if not 0 <= rank < tp:
        raise InvalidArgumentError(f"rank {rank} is outside a {tp}-way group: use 0..{tp - 1}", rank=rank, tp=tp)
    if name in _VOCAB:
        start, stop, rows = vocab_range(cfg.vocab_size, tp, rank)
        return Shard(0, start, stop, rows)
    rule = _RULES.get(name.split(".", 3)[-1]) if name.startswith("model.layers.") else None
    if rule is None:
        return None
    dim, what = rule
    n = {"q": cfg.q_size, "kv": cfg.kv_size, "i": cfg.intermediate_size}[what] // tp
    return Shard(dim, rank * n, (rank + 1) * n, n)


def indexed_device(device: torch.device | str) -> torch.device:
    """The device with its index: a bare "cuda" (what `warmserve worker --device cuda` takes) is GPU 0, as the
    worker's own start-up sets it (worker/main.py, prewarm_engine). torch.cuda.set_device refuses a CUDA device
    without an index, and a group's threads set it (found in review: every join on a bare "cuda" worker failed)."""
    dev = torch.device(device)
    return torch.device("cuda", 0) if dev.type == "cuda" and dev.index is None else dev


class JoinCancelled(Exception):
    """A join was given up (its group left) before every rank came."""


#: The longest sleep between two looks at the store while ranks are awaited: how late a cancel is seen.
MEET_POLL_S = 0.05


def _poll(ready, deadline: float, cancelled: threading.Event | None, timed_out, left: str) -> None:
    """Call ``ready()`` until it is true, 1 ms apart at first, doubling up to MEET_POLL_S: past ``deadline``
    (time.monotonic()) a TimeoutError with ``timed_out()``'s words, once ``cancelled`` is set a JoinCancelled."""
    delay_s = 0.001
    while not ready():
        if time.monotonic() + delay_s > deadline:
            raise TimeoutError(timed_out())
        if cancelled is not None and cancelled.wait(delay_s):
            raise JoinCancelled(left)
        delay_s = min(MEET_POLL_S, delay_s * 2)


def _wait_listening(port: int, group_id: str, deadline: float, cancelled: threading.Event | None) -> None:
    """Wait until the store on ``port`` accepts, cancellably. TCPStore's own connect retries until the group's
    timeout with nothing that can stop it, and a store whose host (rank 0's worker) died never accepts; a plain
    connect is refused at once, and the store takes a connection closed unused without a word."""
    last: list[OSError] = []

    def accepts() -> bool:
        try:
            socket.create_connection((LOOPBACK, port), timeout=max(0.01, min(1.0, deadline - time.monotonic()))).close()
            return True
        except OSError as e:
            last[:] = [e]
            return False

    _poll(accepts, deadline, cancelled,
          lambda: f"group {group_id!r}: its store on port {port} did not accept ({last[0]}) within the join's "
                  "timeout: rank 0's worker is gone", f"group {group_id!r} was left while its store was awaited")


def _meet(tcp, group_id: str, rank: int, world_size: int, deadline: float,
          cancelled: threading.Event | None) -> None:
    """Every rank says it is here, then waits for the others by polling ``check``, so a cancel is seen within
    MEET_POLL_S. Without it a rank whose peer died waited inside gloo's rendezvous, which nothing stops, for the
    whole timeout, and every join queued behind it on its worker waited too (found in review: a tensor-parallel
    model's next request after a rank died took 22-29 s). ``wait`` with a short timeout would not do: a timed-out
    wait leaves the store's late answer on the connection. A rank that dies after saying it is here still costs
    the timeout, in gloo: a window of milliseconds."""
    here = f"{group_id}/here/"
    tcp.set(f"{here}{rank}", "1")
    others = [r for r in range(world_size) if r != rank]
    _poll(lambda: tcp.check([f"{here}{r}" for r in others]), deadline, cancelled,
          lambda: f"group {group_id!r}: ranks {[r for r in others if not tcp.check([f'{here}{r}'])]} of "
                  f"{world_size} did not come within the join's timeout (their workers are gone or slow)",
          f"group {group_id!r} was left while its ranks were awaited")


class ParallelGroup:
    """This process's place in a tensor-parallel group, and the collectives the model runs through it."""

    def __init__(self, rank: int, world_size: int, group=None, owns_default: bool = False):
        """group: a torch.distributed ProcessGroup (None: the default group). Use ``ParallelGroup.init`` to start
        one; this constructor wraps a group made elsewhere (e.g. one of several built ahead for later binding)."""
        if not 0 <= rank < world_size:
            raise InvalidArgumentError(f"rank {rank} is outside a group of {world_size}", rank=rank,
                                       world_size=world_size)
        #: This process's rank in the group (the shard it holds).
        self.rank = rank
        #: Ranks in the group (tp).
        self.world_size = world_size
        self.group = group
        self._owns_default = owns_default
        #: The name the group was built under (``join``); "" for the default group.
        self.group_id = ""
        #: Where its collectives' tensors live (CPU for gloo).
        self.device = torch.device("cpu")
        #: A gloo group over the same ranks for control messages (``join``); None: ``group`` carries them.
        self.cpu_group = None
        #: The backend of the collectives on the model's tensors: "gloo" or "nccl".
        self.backend = str(group.name() if group is not None
                           else dist.get_backend() if dist.is_initialized() else "gloo").lower()
        #: Collectives (data and control alike) this rank started and returned from. Ranks in step have the same
        #: counts, so a rank whose step raised can tell the others where (failed_together); one started that did
        #: not return failed inside the group.
        self.ops_started = 0
        self.ops_done = 0
        #: A store every rank reaches outside the group's collectives (``join`` keeps its rendezvous store); None
        #: for a group from ``init``, whose ranks then cannot agree on a failed step (the instance ends).
        self.store = None

    @classmethod
    def init(cls, rank: int, world_size: int, address: str, port: int, backend: str | None = None,
             device: torch.device | str = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S) -> "ParallelGroup":
        """Join (as ``rank`` of ``world_size``) the default process group that rank 0 hosts at address:port over
        TCP. backend: "gloo" or "nccl"; None picks NCCL for a CUDA device, gloo otherwise. Every collective, and
        the rendezvous itself, fails after timeout_s rather than waiting forever for a rank that died."""
        dev = indexed_device(device)
        if backend is None:
            backend = "nccl" if dev.type == "cuda" else "gloo"
        if dist.is_initialized():
            raise InvalidArgumentError("this process already belongs to a default process group: wrap it with "
                                       "ParallelGroup(rank, world_size) instead", backend=dist.get_backend())
        timeout = datetime.timedelta(seconds=timeout_s)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)  # NCCL binds the communicator to the current device
        dist.init_process_group(backend, init_method=f"tcp://{address}:{int(port)}", rank=rank,
                                world_size=world_size, timeout=timeout)
        out = cls(rank, world_size, None, owns_default=True)
        out.device = dev
        if backend == "nccl":
            # NCCL takes device tensors only, so the control messages (min_int, the leader's plans) need a gloo
            # group over the same ranks, as join builds (found in review: before, min_int sent a CPU tensor through
            # NCCL, which refuses it). Every rank calls new_group, in the same order: it is itself collective.
            out.cpu_group = dist.new_group(backend="gloo", timeout=timeout)
        return out

    @classmethod
    def join(cls, group_id: str, rank: int, world_size: int, store_port: int, device: torch.device | str = "cpu",
             timeout_s: float = DEFAULT_TIMEOUT_S, cancelled: threading.Event | None = None) -> "ParallelGroup":
        """Build a process group of its own (not torch's default group: a worker belongs to several, built ahead
        of the instances that will use them, and to new ones after a peer is replaced), meeting at the loopback
        store on ``store_port`` (``host_store``) under the prefix ``group_id``. Blocks until every rank is in, at
        most timeout_s, or until ``cancelled`` is set (``JoinCancelled``). gloo on CPU, NCCL on CUDA devices.
        Loopback only: a group never spans two machines."""
        dev = indexed_device(device)
        timeout = datetime.timedelta(seconds=timeout_s)
        deadline = time.monotonic() + timeout_s
        _wait_listening(int(store_port), group_id, deadline, cancelled)
        tcp = dist.TCPStore(LOOPBACK, int(store_port), is_master=False, timeout=timeout)
        _meet(tcp, group_id, rank, world_size, deadline, cancelled)
        opts = dist.ProcessGroupGloo._Options()
        opts._timeout = timeout
        # Gloo picks the interface the host name resolves to unless told; the group is local, so loopback.
        opts._devices = [dist.ProcessGroupGloo.create_device(hostname=LOOPBACK)]
        # The control group: small CPU messages (the leader's plans, agreed counts) never go through NCCL, which
        # takes device tensors only; on CPU it is also the data group.
        cpu = dist.ProcessGroupGloo(dist.PrefixStore(f"{group_id}/cpu/", tcp), rank, world_size, opts)
        pg = cpu
        if dev.type == "cuda":
            # NCCL binds a communicator to the calling thread's current device, and this runs on a thread of its
            # own (whose current device is 0 whatever the worker's is).
            torch.cuda.set_device(dev)
            nccl_opts = dist.ProcessGroupNCCL.Options()
            nccl_opts._timeout = timeout
            pg = dist.ProcessGroupNCCL(dist.PrefixStore(f"{group_id}/nccl/", tcp), rank, world_size, nccl_opts)
        out = cls(rank, world_size, pg)
        out.group_id, out.device, out.cpu_group = group_id, dev, cpu
        out.store = dist.PrefixStore(f"{group_id}/side/", tcp)
        # One collective now, so the connections exist before an instance needs them (the "prewarmed
        # communicator": NCCL, too, connects lazily on its first collective).
        out.all_reduce(torch.zeros(1, device=dev))
        out.min_int(0)
        return out

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum t over the ranks, in place; returns t."""
        self.ops_started += 1
        dist.all_reduce(t, group=self.group)
        self.ops_done += 1
        return t

    def min_int(self, x: int) -> int:
        """The smallest of every rank's x (over the CPU control group)."""
        return self.min_ints([x])[0]

    def min_ints(self, xs: list[int]) -> list[int]:
        """The smallest of every rank's value at each position of xs (one collective, over the CPU control
        group; every rank passes as many values)."""
        t = torch.tensor([int(x) for x in xs], dtype=torch.int64,
                         device="cpu" if self.cpu_group is not None else self.device)
        self.ops_started += 1
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.cpu_group or self.group)
        self.ops_done += 1
        return [int(v) for v in t.tolist()]

    def broadcast(self, t: torch.Tensor, root: int = 0) -> torch.Tensor:
        """Rank root's t, into t on every rank (same shape and dtype everywhere; a CPU tensor for a group built
        by ``join``); returns t."""
        self.ops_started += 1
        if self.cpu_group is None:
            dist.broadcast(t, src=root, group=self.group)
        else:  # a group of its own (join): dist.broadcast would read src as a rank of the default group
            self.cpu_group.broadcast(t, root).wait()
        self.ops_done += 1
        return t

    def all_gather(self, t: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Every rank's t (same shape on each), concatenated along dim in rank order."""
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        self.ops_started += 1
        dist.all_gather(parts, t.contiguous(), group=self.group)
        self.ops_done += 1
        return torch.cat(parts, dim=dim)

    def failed_together(self, what: str, wait_s: float) -> bool:
        """This rank's work between collectives (an engine step) just raised (``what``: the exception's type, left
        in the store for a post-mortem): whether every rank raised after the same collectives, so none waits in one
        and the group can go on. Each rank says where through the store, never through the group, where a rank
        left waiting in a collective would take the message for its own. False when a rank did not say the same
        within wait_s (it waits in a collective, or did not fail), when this rank failed inside a collective (the
        group itself failed), or without a store. The counts are the same on every rank in step and grow between
        two failures (the leader's plan comes between steps), so a key is never reused."""
        if self.store is None or self.ops_started != self.ops_done:
            return False
        key = f"failed-after-{self.ops_done}"
        try:
            self.store.set(f"{key}/{self.rank}", what)
            self.store.wait([f"{key}/{r}" for r in range(self.world_size) if r != self.rank],
                            datetime.timedelta(seconds=wait_s))
        except Exception:  # the store's timeout, or its host (rank 0's worker) is gone: not together
            return False
        return True

    def close(self) -> None:
        """Leave the default group if ``init`` joined it. Idempotent."""
        if self._owns_default and dist.is_initialized():
            dist.destroy_process_group()
        self._owns_default = False

    def __repr__(self) -> str:
        return f"ParallelGroup(rank {self.rank} of {self.world_size})"


__all__ = ["DEFAULT_TIMEOUT_S", "LOOPBACK", "host_store", "JoinCancelled", "TensorParallelError", "Shard",
           "ParallelGroup", "valid_tp", "shard_config", "vocab_range", "shard_of"]
