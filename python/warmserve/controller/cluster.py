"""`warmserve.Cluster`: the whole system from Python, without HTTP.

    with warmserve.Cluster(models=["/ckpt/llama-20m", ModelSpec("/ckpt/qwen2-30m", name="qwen")]) as c:
        print(c.generate("llama-20m", "Hello", max_tokens=16).text)
        for piece in c.stream("qwen", "Once upon a time", max_tokens=32):
            print(piece, end="")

The controller runs on an asyncio loop in a background thread; local workers are child processes (one per GPU, or
CPU workers when there is none), and workers on other hosts join with
`warmserve worker --controller <Cluster.endpoint>` (bind the cluster to a reachable address for that). With
``ray_address`` the workers are Ray actors instead, on every node of that Ray cluster (controller/ray_launch.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import numbers
import os
import threading
import weakref
from dataclasses import dataclass

from warmserve.config import ClusterConfig, ControllerConfig, ModelSpec
from warmserve.policy.config import PolicyConfig
from warmserve.controller import cluster_async, exit_close
from warmserve.controller.cluster_checks import (  # noqa: F401  (LONGEST_WAIT_S: cluster.LONGEST_WAIT_S, as before)
    LONGEST_WAIT_S, _check_bind, _check_devices, _check_paths, _check_prompt, _check_sampling, _check_timeout,
    _wait_limit_s,
)
from warmserve.controller.frontend import TextGeneration, prepare
from warmserve.controller.loopgate import LoopGate
from warmserve.controller.openai_api import messages_from, with_model_defaults
from warmserve.errors import ClosedError, InvalidArgumentError, TimeoutError_, UnknownModelError
from warmserve.outputs import check_output_folder
from warmserve.protocol import SamplingParams, stop_strings

#: Cluster()'s arguments a ``config`` takes the place of, each with the ClusterConfig field that holds it.
_CONFIG_FIELD_OF = {
    "models": "models", "devices": "devices", "policy": "controller.policy", "cpu_workers": "cpu_workers",
    "cpu_worker_memory_bytes": "cpu_worker_memory_bytes", "remote_workers": "remote_workers", "bind": "controller.bind",
    "window_s": "controller.policy_config.window_s", "history_path": "controller.history_path",
    "history_record_path": "controller.history_record_path", "load_timezone": "controller.load_timezone",
    "curve_dir": "controller.curve_dir", "insecure": "controller.insecure", "start_timeout_s": "worker_start_timeout_s"}


def _model_specs(models) -> tuple[ModelSpec, ...]:
    """Cluster()'s ``models`` (one checkpoint path or ModelSpec, or a list of them) as ModelSpecs."""
    if isinstance(models, (str, os.PathLike, ModelSpec)):
        models = [models]
    # found in review: None and 123 were bare TypeErrors, [None] looked for a checkpoint named "None"
    if not isinstance(models, (list, tuple)) or not all(isinstance(m, (str, os.PathLike, ModelSpec)) for m in models):
        raise InvalidArgumentError(f"models must be checkpoint paths or ModelSpecs (one, or a list), got "
                                   f"{models!r:.80}", param="models")
    return tuple(m if isinstance(m, ModelSpec) else ModelSpec(path=os.fspath(m)) for m in models)


def _refuse_beside_config(config: ClusterConfig, given: dict) -> None:
    """Refuse the arguments in ``given`` that differ from their defaults (models: from None, or the config's own)
    while ``config`` is given (found in review: Cluster(None, config=cfg, cpu_workers=4) ran 2 workers, unsaid)."""
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(Cluster.__init__).parameters.items()}
    defaults["models"] = None
    dropped = {}
    for k, v in given.items():
        try:
            same = bool(v == defaults[k]) or (k == "models" and _model_specs(v) == config.models)
        except Exception:  # an array's ambiguous truth, models that are no paths: not the default, so named
            same = False
        if not same:
            dropped[k] = v
    if dropped:
        said = ", ".join(f"{k}={v!r:.60}" for k, v in dropped.items())
        fix = ", ".join(f"{k} -> {_CONFIG_FIELD_OF[k]}" for k in dropped)
        k, v = next(iter(dropped.items()))
        field = _CONFIG_FIELD_OF[k].split(".")
        e_g = (f"dataclasses.replace(cfg, {field[0]}={v!r:.40})" if len(field) == 1 else
               f"dataclasses.replace(cfg, controller=dataclasses.replace(cfg.controller, {field[1]}=...))")
        raise InvalidArgumentError(
            f"Cluster(config=...) takes its settings from the config alone, which would drop {said}. Fix: set them "
            f"in the ClusterConfig ({fix}; e.g. {e_g}) and pass models=None, or leave config out",
            param="config", dropped=sorted(dropped))


@dataclass(frozen=True)
class Completion:
    """The result of one generate() call."""

    text: str
    #: The tokens of ``text`` (an EOS or stop token that ended it included); not a stop string's own tokens.
    token_ids: list[int]
    #: "stop" (EOS, a stop_token_ids token or a stop string) or "length" (max_tokens). Not "abort": a generate()
    #: that ends early raises (timeout_s: TimeoutError_; close(drain=False): OverloadedError); a stream left says it.
    finish_reason: str
    prompt_tokens: int
    #: Tokens generated, through the one that completed a stop string: may pass len(token_ids) (docs/api.md).
    completion_tokens: int
    #: One ``protocol.TokenLogprobs`` per token of token_ids, when the sampling asked for ``logprobs``; else empty.
    logprobs: tuple = ()
    #: One ``protocol.TokenLogprobs`` per prompt token but the first (nothing precedes it) if asked; else empty.
    prompt_logprobs: tuple = ()


#: How long a cancelled call waits for its work's own clean-up (an abort sent, workers of a failed start stopped).
CANCEL_WAIT_S = 30.0
#: The sampling keywords of generate()/stream() and their defaults (the OpenAI API's temperature of 1). The
#: signatures default them to None, so that one given explicitly is told from one left out (found in review:
#: params=SamplingParams(max_tokens=2) with max_tokens=16 dropped the 16 silently, as the default's value).
_KEYWORDS = {"max_tokens": 16, "temperature": 1.0, "top_p": 1.0, "seed": None, "stop": None}


class Cluster:
    """The whole serving system in this process: generate(), agenerate() and stream() on its models, stats(), and
    close() (or a ``with`` block). Its methods may be called from several threads at once; in asyncio code, await
    agenerate() and read stream() with ``async for`` (or ``anext()``), which wait without blocking the event loop,
    and start and close it with ``async with await Cluster.astart(...)`` (or ``await c.aclose()``)."""

    #: While Cluster.astart builds this one: its future, cancelled when the task awaiting it is (cluster_async.py).
    _abandon: concurrent.futures.Future | None = None

    def __init__(
        self,
        models=None,
        devices=None,
        policy: str = "warmserve",
        *,
        cpu_workers: int = 2,
        cpu_worker_memory_bytes: int = 0,
        remote_workers: int = 0,
        bind: str = "",
        window_s: float = 300.0,
        history_path: str = "",
        history_record_path: str = "",
        load_timezone: str = "",
        curve_dir: str = "",
        insecure: bool = False,
        start_timeout_s: float = 120.0,
        config: ClusterConfig | None = None,
        log_dir: str | None = None,
        ray_address: str | None = None,
    ):
        """Start a cluster serving ``models`` (checkpoint paths or ModelSpecs).

        devices: local devices, one worker each ("cuda:0", "cpu:0", ...); None = one per GPU, or ``cpu_workers``
        CPU workers when there is no GPU. remote_workers: how many workers on other hosts to wait for (they connect
        to ``bind``: with ``curve_dir`` for keys, or ``insecure=True`` on a trusted network, as `warmserve serve
        --insecure`). ``config`` takes the place of every other argument but log_dir and ray_address: one of
        them given beside it (other than None or its default) is refused, as the config would drop it.
        ray_address: start the workers on that Ray cluster ("auto": the one this machine belongs to; needs the ray
        extra), one per GPU or ``cpu_workers`` per node without GPUs, on every node, instead of local devices
        (``devices`` must then be None). load_timezone: the
        IANA zone whose days the load follows ("": the local one), so forecasts keep its hours across
        daylight-saving switches. history_path: a load history the forecasts start from; history_record_path: a
        file the load this cluster measures is kept in, for history_path next time (controller/history_record.py).
        policy: one of ``warmserve.policy.POLICY_NAMES``; window_s: the forecast window, seconds; start_timeout_s:
        seconds to wait for the workers to come up and register; cpu_worker_memory_bytes: the host memory of each
        CPU worker (0: sized from the models). log_dir: a directory for the workers' logs (None: this process's
        stderr).
        """
        _check_paths(log_dir, ray_address)
        log_dir = os.fspath(log_dir) if log_dir is not None else None
        if config is not None and not isinstance(config, ClusterConfig):
            raise InvalidArgumentError(f"config must be a warmserve.config.ClusterConfig, got "
                                       f"{type(config).__name__}: pass the other arguments instead", param="config")
        given_config = config is not None
        if given_config:  # before anything starts
            args = dict(locals())
            _refuse_beside_config(config, {k: args[k] for k in _CONFIG_FIELD_OF})
        if config is None:
            specs = _model_specs(models)
            if isinstance(window_s, bool) or not isinstance(window_s, numbers.Real) or not math.isfinite(window_s):
                raise InvalidArgumentError(f"window_s must be a finite number of seconds, got {window_s!r}",
                                           param="window_s")
            _check_devices(devices)
            # One device given alone is a one-item list (found in review: "cpu:0" was iterated per character).
            config = ClusterConfig(
                models=specs, devices=(devices,) if isinstance(devices, str) else tuple(devices or ()),
                cpu_workers=cpu_workers, cpu_worker_memory_bytes=cpu_worker_memory_bytes,
                remote_workers=remote_workers, worker_start_timeout_s=start_timeout_s,
                controller=ControllerConfig(bind=bind, policy=policy, policy_config=PolicyConfig(window_s=window_s),
                                            history_path=history_path, history_record_path=history_record_path,
                                            load_timezone=load_timezone, curve_dir=curve_dir, insecure=insecure),
            )
        if not config.models:
            fix = "give config=ClusterConfig(models=(...))" if given_config else "pass checkpoint paths or ModelSpecs"
            raise InvalidArgumentError(f"Cluster needs at least one model: {fix}", param="models")
        _check_bind(config.controller)
        from warmserve.controller.history_record import starting_history
        from warmserve.controller.serve import check_local_devices

        if ray_address is None:
            check_local_devices(config.devices)
        if log_dir is not None:  # a file there was a bare FileExistsError at the first spawn; made once all is checked
            check_output_folder("log_dir", log_dir)
        self.config = config
        # before the loop's thread starts (found in review: a missing file left it running while the error lived)
        history = starting_history(config.controller)
        self._loop = asyncio.new_event_loop()
        self._gate = LoopGate(self._loop, "warmserve-controller")  # runs the loop on a thread of its own
        self._thread = self._gate.thread
        self._closed = False
        self._close_lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _shutdown, self._gate, None)
        from warmserve.controller.launch import start_cluster

        if ray_address is not None:
            from warmserve.controller.ray_launch import start_ray_cluster

            starting = start_ray_cluster(config, ray_address, history=history, log_dir=log_dir)
        else:
            starting = start_cluster(config, history=history, log_dir=log_dir)
        try:
            self.controller = self._run(starting, config.worker_start_timeout_s + 30, self._abandon)
        except BaseException:
            self._finalizer()
            raise
        self._finalizer.detach()
        # what close() asks of the finalizer, in a list of its own: the finalizer must not hold the Cluster
        self._drain_on_close = [True]
        self._finalizer = weakref.finalize(self, _shutdown, self._gate, self.controller, self._drain_on_close)
        exit_close.watch(self._finalizer)  # closed with no drain at interpreter exit

    # ----------------------------------------------------------------------------------------------- plumbing

    def _run(self, coro, timeout_s: float | None = None, abandon: concurrent.futures.Future | None = None):
        """Run ``coro`` on the controller's loop and wait for it. If the wait ends early (``timeout_s``, Ctrl-C,
        ``abandon`` cancelled), the coroutine is cancelled and its own clean-up has run when this raises (found in
        review: a timed-out generate ran on to max_tokens, and an interrupted start left its workers running)."""
        done = threading.Event()  # set by the gate once nothing of the work runs, started or not
        fut = self._gate.submit(coro, ended=done)
        try:
            if abandon is None:
                concurrent.futures.wait((fut,), _wait_limit_s(timeout_s))
            else:
                cluster_async.wait(fut, abandon, _wait_limit_s(timeout_s))
        except BaseException:  # Ctrl-C
            self._cancel(fut, done)
            raise
        if abandon is not None and abandon.cancelled() and self._cancel(fut, done):
            raise concurrent.futures.CancelledError("Cluster.astart was cancelled: its start was stopped")
        # Only a wait that ran out is the caller's timeout. Found in review: any TimeoutError the work raised (a
        # queue timeout, a worker start's: TimeoutError_ is a TimeoutError, as concurrent.futures' is) was
        # rewritten as this one, with timeout_s=None failing to format.
        if not fut.done() and self._cancel(fut, done):
            raise TimeoutError_(f"no result within {timeout_s:g} s: the work was cancelled (a generation is "
                                "aborted on its worker); raise timeout_s", timeout_s=timeout_s)
        return fut.result()

    @staticmethod
    def _cancel(fut: concurrent.futures.Future, done: threading.Event) -> bool:
        """Cancel the work of ``fut`` and wait for its clean-up; False when it had ended already."""
        if not fut.cancel():
            return False
        done.wait(CANCEL_WAIT_S)
        return True

    def _check(self):
        if (forked := self._gate.forked()) is not None:
            raise forked
        if self._closed:
            raise ClosedError("this Cluster is closed")

    def _submit(self, coro, *inner) -> concurrent.futures.Future:
        """Schedule ``coro`` on the controller's loop. Once the close has begun to stop the loop, ClosedError, with
        ``coro`` (and the ``inner`` coroutines it would have awaited) closed unrun; work the stopping loop leaves
        unfinished ends in ClosedError too (controller/loopgate.py). Found in review: a stream read after close()
        raised "Event loop is closed" and left "coroutine was never awaited" warnings."""
        return self._gate.submit(coro, *inner)

    @property
    def endpoint(self) -> str:
        """The ZeroMQ address workers on other hosts join (`warmserve worker --controller`); ClosedError once closed."""
        self._check()
        return self.controller.hub.endpoint

    @property
    def models(self) -> list[str]:
        """The names the served models are asked for by (ModelSpec.name); readable after close() too."""
        return self.controller.model_names()

    def _prepare(self, model: str, prompt, params, max_tokens, temperature, top_p, seed, stop, messages):
        """Runs in the caller's thread, so tokenising a long prompt never stalls the controller's loop."""
        if not isinstance(model, str):  # found in review: a list or dict was a bare TypeError (unhashable)
            raise UnknownModelError(f"model must be the name of a served model (str), got {type(model).__name__} "
                                    f"{model!r:.40}; this cluster serves {self.models}", param="model",
                                    model=repr(model)[:80])
        m = self.controller.model(model)
        _check_prompt(prompt)
        keywords = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, stop=stop)
        if params is None:
            k = {name: _KEYWORDS[name] if v is None else v for name, v in keywords.items()}
            _check_sampling(k)
            s = with_model_defaults(SamplingParams(  # left out: the model's generation_config.json values, as HTTP's
                max_tokens=k["max_tokens"], temperature=float(k["temperature"]), top_p=float(k["top_p"]),
                seed=k["seed"], stop=stop_strings(k["stop"])), m.sampling_defaults, keywords.get)
        else:
            given = {name: v for name, v in keywords.items() if v is not None}
            if not isinstance(params, SamplingParams) or given:
                raise InvalidArgumentError(
                    f"pass the sampling either as params=warmserve.SamplingParams(...) or as keywords, not both "
                    f"(also given: {sorted(given)})" if given else
                    f"params must be a warmserve.SamplingParams, not {type(params).__name__}", param="params")
            s = params
        msgs = None
        if messages is not None:
            if not (prompt is None or isinstance(prompt, str) and not prompt):  # `in ("", None)` fails on arrays
                raise InvalidArgumentError("pass a prompt or messages, not both", param="prompt")
            msgs = messages_from(messages)
        ids = prepare(m, prompt, msgs, max_tokens=s.max_tokens)
        return m, ids, s

    # ----------------------------------------------------------------------------------------------- public

    def generate(self, model: str, prompt="", *, params: SamplingParams | None = None, max_tokens: int | None = None,
                 temperature: float | None = None, top_p: float | None = None, seed: int | None = None, stop=None,
                 messages=None, timeout_s: float | None = None) -> Completion:
        """Generate a completion of ``prompt`` (text or token ids), or of a chat given as ``messages``. Sampling:
        the keywords (defaults: max_tokens 16, whatever generation_config.json says; temperature and top_p as the
        checkpoint's generation_config.json sets them, as the HTTP API takes them, else 1 and 1), or ``params`` (a
        ``warmserve.SamplingParams``, taken as it is: every option the engine has, the same object the HTTP API
        builds), not both. timeout_s: how long to wait for the whole completion (None or math.inf: no limit); when it
        runs out the generation is aborted and TimeoutError_ raised."""
        self._check()
        timeout_s = _check_timeout(timeout_s)
        m, ids, s = self._prepare(model, prompt, params, max_tokens, temperature, top_p, seed, stop, messages)
        return self._run(self._collect(m, ids, s), timeout_s)

    async def agenerate(self, model: str, prompt="", *, params: SamplingParams | None = None,
                        max_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
                        seed: int | None = None, stop=None, messages=None) -> Completion:
        """generate() for asyncio code: awaits without blocking the caller's event loop (the prompt is prepared
        on a worker thread, the generation runs on the controller's loop)."""
        self._check()
        m, ids, s = await asyncio.to_thread(self._prepare, model, prompt, params, max_tokens, temperature, top_p,
                                            seed, stop, messages)
        return await asyncio.wrap_future(self._submit(self._collect(m, ids, s)))

    async def _collect(self, m, ids, s) -> Completion:
        gen = TextGeneration(self.controller.submit_nowait(m.name, ids, s), m.tokenizer.decode, s.stop)
        text = await gen.collect()
        lps = tuple(lp for _, _, lp in gen.take_logprobs()) if s.logprobs is not None else ()
        # found in review: asked for, they had nowhere to go in the result
        plps = tuple(gen.req.prompt_logprobs) if s.prompt_logprobs is not None else ()
        return Completion(text=text, token_ids=list(gen.text.ids), finish_reason=gen.finish_reason or "stop",
                          prompt_tokens=len(ids), completion_tokens=gen.completion_tokens, logprobs=lps,
                          prompt_logprobs=plps)

    def stream(self, model: str, prompt="", *, params: SamplingParams | None = None, max_tokens: int | None = None,
               temperature: float | None = None, top_p: float | None = None, seed: int | None = None, stop=None,
               messages=None) -> "TextIterator":
        """Text pieces as they are generated: ``for piece in c.stream(...)`` or ``async for piece in ...``. The
        prompt is prepared (tokenised, checked) here, on the calling thread: from asyncio code, ``astream``."""
        self._check()
        m, ids, s = self._prepare(model, prompt, params, max_tokens, temperature, top_p, seed, stop, messages)
        return TextIterator(self, m, ids, s)

    async def astream(self, model: str, prompt="", *, params: SamplingParams | None = None,
                      max_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
                      seed: int | None = None, stop=None, messages=None) -> "TextIterator":
        """stream() for asyncio code: ``async for piece in await c.astream(...)``. The prompt is prepared on a
        worker thread, as agenerate() prepares it; found in review: stream() tokenised a long prompt on the
        caller's event loop, stalling it, and its errors (a bad model, a prompt too long) are raised here."""
        self._check()
        m, ids, s = await asyncio.to_thread(self._prepare, model, prompt, params, max_tokens, temperature, top_p,
                                            seed, stop, messages)
        return TextIterator(self, m, ids, s)

    def stats(self) -> dict:
        """As plain dicts: ``workers`` (pool pages, models, host cache, resident memory), ``instances``,
        ``prewarms``, ``queued`` (per model), ``tp_groups``, ``prewarm_hits``, ``prewarm_misses`` and
        ``prewarm_loading_starts`` (starts from a prewarm still loading, neither), and ``engine_starts`` (the fresh
        engine processes of `autoscale`'s cold starts)."""
        self._check()
        return self._run(_acall(self.controller.stats), 30)

    def close(self, drain: bool = True) -> None:
        """Let running requests finish (up to ``drain_timeout_s``; with ``drain=False`` they fail at once, with
        OverloadedError), stop the local workers and the controller loop. A close made while another is under way
        waits for that one to end (found in review: it returned at once, the workers still running); with
        ``drain=False`` it cuts that one's drain short. Called on the controller's own loop thread (a callback of
        it), it cannot wait for that loop: the close goes on in a thread of its own and this returns at once."""
        with self._close_lock:
            first = not self._closed
            self._closed = True
            if not drain and hasattr(self, "_drain_on_close"):
                self._drain_on_close[0] = False
        if first:
            self._finalizer()
            return
        if not drain and hasattr(self, "controller") and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self.controller.end_drain)
            except RuntimeError:  # the loop closed meanwhile: the first close is through
                pass
        if threading.current_thread() is not self._gate.thread:
            self._gate.stopped.wait()  # set when the first close is through; that close's own waits are bounded

    @classmethod
    async def astart(cls, *args, **kwargs) -> "Cluster":
        """``Cluster(*args, **kwargs)`` for asyncio code (``async with await Cluster.astart(...) as c``): the start
        runs on a thread of its own while the caller's event loop runs on. The awaiting task cancelled, the start
        is stopped, its workers with it (controller/cluster_async.py)."""
        return await cluster_async.start(cls, args, kwargs)

    async def aclose(self, drain: bool = True) -> None:
        """close() for asyncio code: it waits for the drain on a thread while the caller's event loop runs on (an
        ``async with`` block's end calls it). Cancelled, the close still goes on to its end."""
        await asyncio.to_thread(self.close, drain)

    async def __aenter__(self) -> "Cluster":
        return self.__enter__()

    async def __aexit__(self, exc_type, exc, tb) -> None:
        await self.aclose(drain=exc_type is None)  # as __exit__: no drain on an exception

    def __enter__(self) -> "Cluster":
        self._check()  # found in review: `with` on a closed cluster entered, to fail at its first call
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # On an exception, no drain: found in review, the traceback kept the block's unread streams alive, so the
        # close waited the whole drain_timeout_s (30 s) for generations nobody would read before the error showed.
        self.close(drain=exc_type is None)


class TextIterator:
    """A generation's text pieces, read once: with ``for`` or ``async for`` (breaking out aborts it), or one at a
    time with ``next()`` / ``await anext()`` (one dropped unfinished is aborted once collected)."""

    def __init__(self, cluster: Cluster, m, ids, s):
        self._c, self._m, self._ids, self._s = cluster, m, ids, s
        self._gen: TextGeneration | None = None

    @property
    def finish_reason(self) -> str | None:
        """As Completion.finish_reason once the generation has ended, or "abort" once its reader left it; None
        before."""
        return self._gen.finish_reason if self._gen is not None else None

    # Found in review: the README calls stream() an async iterator and the class is a TextIterator, yet next() and
    # anext() raised TypeError ("not an iterator"): only for-loops could read it.
    def __next__(self) -> str:
        try:
            piece = self._c._run(self._next())
        except ClosedError as e:
            piece = self._rest(e)
        except BaseException:  # failed or interrupted: nothing reads it on
            self._abort()
            raise
        if piece is None:
            raise StopIteration
        return piece

    async def __anext__(self) -> str:
        try:
            piece = await self._anext_impl()
        except BaseException:  # failed or cancelled (asyncio.wait_for): nothing reads it on
            self._abort()
            raise
        if piece is None:
            raise StopAsyncIteration
        return piece

    def __del__(self):
        try:  # a stream read with next() and dropped unfinished has no for-loop's end to abort it
            self._abort()
        except Exception:  # the interpreter ending: its workers go with it
            pass

    async def _next(self) -> str | None:
        """Next non-empty piece, or None at the end (runs on the controller's loop)."""
        if self._gen is None:
            req = self._c.controller.submit_nowait(self._m.name, self._ids, self._s)
            self._gen = TextGeneration(req, self._m.tokenizer.decode, self._s.stop)
        try:
            return await self._gen.__anext__()
        except StopAsyncIteration:
            return None

    def __iter__(self):
        try:
            while True:
                try:
                    piece = self._c._run(self._next())
                except ClosedError as e:
                    piece = self._rest(e)
                if piece is None:
                    return
                yield piece
        finally:
            self._abort()

    def _rest(self, closed: ClosedError) -> str | None:
        """The next piece of a generation that ended before its cluster closed (``close()`` lets running requests
        finish): the text left unread, taken here, the controller's loop having stopped. Found in review: a stream
        read after close() lost that text to a ClosedError. ``closed`` is raised for one still running or never
        submitted."""
        gen = self._gen
        # A close may be stopping the loop still (its gate shuts first): the request is read here once nothing of
        # the loop runs any more. With the gate open, the ClosedError is the request's own.
        gate = self._c._gate
        if gen is None or gate.open or not gate.stopped.wait(CANCEL_WAIT_S) or not gen.req.done \
                or self._c._thread.is_alive():
            raise closed
        # Nothing of an ended request's iteration waits (its tokens and end are queued), so one step runs it whole.
        step = self._next()
        try:
            step.send(None)
        except StopIteration as end:
            return end.value
        step.close()
        raise closed

    async def _anext_impl(self):
        try:
            return await asyncio.wrap_future(self._c._submit(self._next()))
        except ClosedError as e:
            gate = self._c._gate
            if not gate.open:  # _rest's wait for the close to stop the loop, without blocking the caller's loop
                await asyncio.to_thread(gate.stopped.wait, CANCEL_WAIT_S)
            return self._rest(e)

    def __aiter__(self):
        return self._agen()

    async def _agen(self):
        try:
            while True:
                piece = await self._anext_impl()
                if piece is None:
                    return
                yield piece
        finally:
            self._abort()

    def _abort(self):
        # Decided on whether the loop still runs, not on close() having begun (found in review: a reader that left
        # while close() drained left its request running, and the close waited for it to reach max_tokens).
        if self._gen is not None and not self._gen.req.done and self._c._gate.open:
            try:
                self._c._loop.call_soon_threadsafe(self._gen.abort)
            except RuntimeError:  # the loop closed meanwhile: its requests have ended with it
                pass


async def _acall(fn):
    return fn()


def _shutdown(gate: LoopGate, controller, drain: list[bool] | None = None) -> None:
    """The Cluster's finalizer: close() or its collection. On the loop's own thread (a close from a callback of
    it, or the last reference dropped there: a cancelled agenerate's task ending) it cannot wait for that loop,
    so the close goes on in a thread of its own. Found in review: run there, it stalled the loop for the drain's
    whole timeout waiting on itself, failed to join its own thread, and left the workers running."""
    if gate.loop.is_closed() or gate.forked():  # a forked child's exit holds nothing to close (it raised; review)
        return
    drain_now = drain is None or drain[0]
    if threading.current_thread() is not gate.thread:
        _close_and_stop(gate, controller, drain_now)
        return
    # Not a daemon: an interpreter that ends meanwhile waits for the workers to be stopped.
    closer = threading.Thread(target=_close_and_stop, args=(gate, controller, drain_now), name="warmserve-close")
    try:
        closer.start()
    except RuntimeError:  # the interpreter is ending (no new threads): the workers exit with their parent, and a
        gate.stopped.set()  # later close() from another thread must not wait for a close that never runs


def _close_and_stop(gate: LoopGate, controller, drain: bool = True) -> None:
    loop = gate.loop
    if loop.is_closed():
        return
    try:
        if controller is not None and gate.thread.is_alive():
            closing = asyncio.run_coroutine_threadsafe(controller.close(drain=drain), loop)
            try:
                closing.result(controller.cc.drain_timeout_s + 30)
            except Exception:  # the loop may already be stopping at interpreter exit; workers exit with their parent
                pass
            except BaseException:
                # A second Ctrl-C while requests drain: stop waiting for them, let the close stop the workers, then
                # let the interrupt through (found in review: it left the controller and its workers running,
                # with this finalizer already spent).
                loop.call_soon_threadsafe(controller.end_drain)
                concurrent.futures.wait([closing], timeout=CANCEL_WAIT_S + 10)
                raise
    finally:
        gate.stop_loop(join_timeout_s=10)


__all__ = ["Cluster", "Completion", "TextIterator"]
