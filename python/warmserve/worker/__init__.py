"""The device worker: one process per device, serving prewarmed models and running instances over ZeroMQ.

``WorkerClient`` (sync) and ``AsyncWorkerClient`` talk to a worker process; ``InProcessWorker`` runs the same
logic in the calling process with the same interface; ``spawn_local_worker`` starts a worker process.

    proc, endpoint = spawn_local_worker("cpu", memory_gib=2, threads=2)   # returns once the pool exists
    with WorkerClient(endpoint) as w:
        w.prewarm("/models/llama-20m")                  # load into a slot of the pool (progress events)
        w.prewarm("/models/qwen2-30m")                  # several prewarmed models coexist
        w.activate("llama-20m")                         # zero-copy: Activated.copied_bytes == 0
        for ev in w.generate("llama-20m", [1, 2, 3], SamplingParams(max_tokens=16)):
            print(ev.token_ids)
        w.set_kv_target("llama-20m", 4)                 # free KV blocks beyond 4 go back to the pool
        w.deactivate("llama-20m"); w.evict("qwen2-30m")
        w.shutdown()
"""

from .client import AsyncTokenStream, AsyncWorkerClient, TokenStream, WorkerClient
from .core import ModelStateError, WorkerCore
from .inprocess import InProcessWorker
from .spawn import spawn_local_worker

__all__ = [
    "AsyncTokenStream", "AsyncWorkerClient", "InProcessWorker", "ModelStateError", "TokenStream", "WorkerClient",
    "WorkerCore", "spawn_local_worker",
]
