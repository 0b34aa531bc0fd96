"""What the controller knows of each served model: its name, tokenizer, context length and sizes for the policy.

Read from the checkpoint's own files (config.json, the safetensors headers, tokenizer.json) so the controller
process needs no torch: it only tokenizes and plans.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field

import msgspec

from warmserve.config import ModelSpec
from warmserve.controller.model_names import check_model_name, check_model_path
from warmserve.engine.arch import check_tensors, json_object
from warmserve.engine.config import ModelConfig
from warmserve.engine.safetensors_header import CheckpointError, checkpoint_dtype, read_raw_tensors
from warmserve.errors import InvalidArgumentError
from warmserve.geometry import DTYPE_BYTES, kv_bytes_per_token
from warmserve.sampling import SamplingParams

log = logging.getLogger("warmserve.controller")

#: The sampling fields a checkpoint's generation_config.json gives the defaults of, with Hugging Face's own defaults:
#: a field left at its Hugging Face default is not taken, as vLLM takes only the file's non-default values
#: (``--generation-config auto``, its default; ModelConfig.get_diff_sampling_param). ``max_new_tokens`` (Hugging
#: Face's default: none) is read apart, as ``ControllerModel.default_max_tokens``.
GENERATION_CONFIG_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 50, "min_p": None,
                              "repetition_penalty": 1.0}


def load_tokenizer(path: str):
    """The engine's tokenizer (with the chat template). warmserve.engine.tokenizer needs no torch, so the
    controller, which only tokenizes and plans, stays free of it."""
    from warmserve.engine.tokenizer import Tokenizer

    return Tokenizer(path)


@dataclass
class ControllerModel:
    """A model the controller serves, as the controller knows it (the policy's view is ``policy.ModelInfo``,
    the simulator's ``sim.config.ServedModel``)."""

    spec: ModelSpec
    tokenizer: object
    #: Longest prompt plus output the model takes, tokens.
    max_context: int
    #: Bytes of the weights the worker maps, in the dtype it runs the model in (the spec's, else the checkpoint's).
    weight_bytes: int
    #: KV-cache bytes one token takes over all layers.
    kv_bytes_per_token: int
    #: Most characters one token covers (the longest vocabulary entry): bounds a text's tokens from its length.
    max_token_chars: int = 64
    #: Sampling values an HTTP request that leaves them out gets (``sampling_defaults``): the model creator's.
    sampling_defaults: dict = field(default_factory=dict)
    #: Tokens a request that sets no limit may generate (generation_config.json's ``max_new_tokens``), before the
    #: context caps it; None: the context alone. vLLM takes the file's value so (``get_max_tokens``' fallback).
    default_max_tokens: int | None = None

    @property
    def name(self) -> str:
        return self.spec.name


def check_no_broken_links(path: str, name: str) -> None:
    """Refuse a checkpoint folder whose files are links to files that are gone. Found in the review of real
    checkpoints: in a Hugging Face cache each snapshot file links into blobs/, and after an interrupted download or a
    pruned cache the error said "holds no model.safetensors" (or "config.json missing") of a folder that lists it."""
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError:
        return
    broken = [e.name for e in entries if e.is_symlink() and not os.path.exists(e.path)]
    if broken:
        shown = ", ".join(f"{b} -> {os.readlink(os.path.join(path, b))}" for b in broken[:3])
        raise InvalidArgumentError(
            f"model {name!r}: {len(broken)} file(s) of {path} are links to files that are gone ({shown}"
            f"{', ...' if len(broken) > 3 else ''}): a download was interrupted or its cache pruned; download the "
            "checkpoint again (`hf download ORG/NAME` for a Hugging Face cache)", path=path, broken=broken[:8])


def controller_model(spec: ModelSpec) -> ControllerModel:
    path = os.path.abspath(os.path.expanduser(spec.path))
    check_model_path(path, spec.name)
    check_model_name(spec.name, path)
    cfg_path = os.path.join(path, "config.json")
    if os.path.isfile(path):  # found in review: a file's path was said to have no config.json in it
        raise InvalidArgumentError(
            f"model {spec.name!r}: {path} is a file, not a checkpoint directory: point at the directory that holds "
            f"config.json, the *.safetensors and tokenizer.json ({os.path.dirname(path)}?)", path=path)
    check_no_broken_links(path, spec.name)
    if not os.path.isfile(cfg_path):
        # `--model NAME=PATH` (the order other servers' flags take) named the checkpoint after its folder and
        # looked for it under the name (found in review: the error named neither the flag nor the swap)
        swapped = os.path.isfile(os.path.join(os.path.expanduser(spec.name), "config.json"))
        given = os.path.relpath(path)  # a repo id as given, where it was taken from the working directory
        from warmserve.config import default_demo_dir
        from warmserve.engine.demo import DEMO_MODELS, SIZED_MODELS
        from warmserve.hf_cache import looks_like_repo_id, not_cached_hint

        demos = {*DEMO_MODELS, *(n for n, _ in SIZED_MODELS.values())}
        raise InvalidArgumentError(
            f"model {spec.name!r}: no checkpoint at {path} (config.json missing); " + (
                f"the name is the checkpoint folder: the path comes first, as --model {spec.name}="
                f"{os.path.basename(path)} (ModelSpec(path, name=...) from Python)" if swapped else
                # found in review: a demo model's name, given as the path, was told to `hf download` it
                f"{given} is a demo model: give its folder, {os.path.join(default_demo_dir(), given)} (`warmserve "
                f"models demo` writes them; `warmserve serve` with no --model serves them)" if given in demos else
                not_cached_hint(given) if not os.path.exists(path) and looks_like_repo_id(given) else
                "run `warmserve models demo` for the demo models or fix the path"), path=path)
    # What the workers could never run is refused here, at start, not after three failed starts per request: the
    # worker's own checks that need no tensor, on the same files (found in review: a missing shard or tensor, a
    # wrong shape, an unsupported rope or dtype passed here and every request was a 503).
    try:
        cfg = _model_config(path)
        tensors = read_raw_tensors(path)
        shapes = check_tensors(cfg, tensors)
        dtype = _dtype_name(spec.dtype, cfg, tensors)
        tokenizer = load_tokenizer(path)
        # a template that does not parse would fail every chat (found in review: it was parsed at the first one)
        tokenizer.compile_chat_template()
        max_token_chars = tokenizer.max_token_chars
        check_vocabulary(tokenizer, cfg.vocab_size)
        defaults = sampling_defaults(path)
        default_max_tokens = defaults.pop("max_tokens", None)
    except InvalidArgumentError as e:  # named, as every refusal here
        where = "" if path in e.message else f" ({path})"
        quantized = _quantization(path)
        cause = (f"; config.json's quantization_config names {quantized!r}: the engine runs unquantized weights "
                 f"only, so serve the model's unquantized checkpoint" if quantized else "")
        fields = {"path": path, **e.fields, **({"quantization": quantized} if quantized else {})}
        raise type(e)(f"model {spec.name!r}{where}: {e.message}{cause}", **fields) from None
    heads, kv_heads, inter = cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size
    if spec.tp > 1 and (heads % spec.tp or kv_heads % spec.tp or inter % spec.tp):
        ok = [t for t in (1, 2, 4, 8) if not (heads % t or kv_heads % t or inter % t)]
        raise InvalidArgumentError(
            f"model {spec.name!r}: tp={spec.tp} does not split {heads} attention heads, {kv_heads} KV heads and an "
            f"intermediate size of {inter} evenly (each rank holds whole heads): use tp in {ok}",
            tp=spec.tp, num_heads=heads, num_kv_heads=kv_heads, intermediate_size=inter, valid_tp=ok)
    # What the worker maps: the tensors the model reads, in the dtype it runs in (found in review: every
    # *.safetensors in the directory was summed, strays and unread tensors included, and float32 assumed when
    # config.json names no dtype).
    weight_bytes = sum(math.prod(s) for s in shapes.values()) * DTYPE_BYTES[dtype]
    return ControllerModel(
        spec=ModelSpec(path=path, name=spec.name, tp=spec.tp, dtype=spec.dtype),
        tokenizer=tokenizer,
        max_token_chars=max_token_chars,
        max_context=cfg.max_position_embeddings,
        weight_bytes=weight_bytes,
        kv_bytes_per_token=kv_bytes_per_token(cfg.num_layers, kv_heads, cfg.head_dim, DTYPE_BYTES[dtype]),
        sampling_defaults=defaults,
        default_max_tokens=default_max_tokens,
    )


def check_vocabulary(tokenizer, vocab_size: int) -> None:
    """Log a WARNING naming tokenizer.json when it has ids past config.json's vocab_size, which the model has no
    embedding row for: a request whose text encodes to one fails at the worker ("outside the vocabulary"). Found in
    review: nothing said so at start, so another model's tokenizer looked like a model failing most requests. A
    WARNING, not a refusal: a pad token added without resizing the embedding fails only the requests that hold it,
    and small test checkpoints run on a larger tokenizer by design."""
    base = tokenizer.base_vocab_size
    added = sorted(i for i in tokenizer.added_token_ids if i >= max(vocab_size, base))
    if base > vocab_size:
        log.warning("%s: tokenizer.json has %d tokens, but config.json's vocab_size is %d: the tokenizer is not this "
                    "model's (or vocab_size is wrong), and requests whose text encodes to ids %d and up fail; put the "
                    "checkpoint's own tokenizer.json beside its weights", tokenizer.dir, base, vocab_size, vocab_size)
    elif added:
        log.warning("%s: tokenizer.json adds %d token(s) with ids %s past config.json's vocab_size %d, which the "
                    "model has no embedding for: a request that holds one fails; resize the embedding (or remove the "
                    "tokens) to use them", tokenizer.dir, len(added), added[:5], vocab_size)


def sampling_defaults(path: str) -> dict:
    """The sampling defaults of the checkpoint at ``path`` from its generation_config.json ({} without one), as a
    request's values are checked, or CheckpointError naming the file; its ``max_new_tokens`` as ``max_tokens``.
    Found in review: they were never read, so a request that left temperature out sampled at 1.0 where vLLM samples
    at the model's (Llama 3 Instruct's 0.6)."""
    file = os.path.join(path, "generation_config.json")
    if not os.path.isfile(file):
        return {}
    gen = json_object(file)
    out = {k: gen[k] for k, hf in GENERATION_CONFIG_DEFAULTS.items() if gen.get(k) is not None and gen[k] != hf}
    if isinstance(out.get("top_k"), int) and out["top_k"] < 0:
        out["top_k"] = 0  # -1: no cut, as the API takes it
    most = gen.get("max_new_tokens")
    if most is not None and (isinstance(most, bool) or not isinstance(most, int) or most < 1):
        raise CheckpointError(f"{file}: max_new_tokens must be an integer >= 1, got {most!r}: fix the value, or "
                              f"delete the key to let a request that sets no limit run to the context", path=file)
    try:
        checked = msgspec.convert(out, SamplingParams)  # types and ranges, as a request's
    except (msgspec.ValidationError, InvalidArgumentError) as e:
        raise CheckpointError(f"{file}: {e}: fix the value, or delete the key to sample with the API's default",
                              path=file) from None
    out = {k: getattr(checked, k) for k in out}  # as the fields' types (an integer temperature, a float)
    if most is not None:
        out["max_tokens"] = most
    if out:
        log.info("%s: requests that leave them out sample with generation_config.json's %s, as vLLM does",
                 os.path.basename(path), out)
    return out


def _quantization(path: str) -> str | None:
    """The quantization config.json declares (quantization_config's quant_method, as transformers and vLLM read it),
    or None. Found in the review of real checkpoints: an AWQ or FP8 repo was refused as lacking its q_proj.weight or
    holding F8_E4M3 tensors, which named a symptom, not that quantized checkpoints are not served. Only a refusal
    says it: a config that declares quantization over plain weights runs."""
    try:
        q = json_object(os.path.join(path, "config.json")).get("quantization_config")
    except (OSError, InvalidArgumentError):
        return None
    if not isinstance(q, dict):
        return None
    return str(q.get("quant_method") or "quantization_config")


def _model_config(path: str) -> ModelConfig:
    """config.json (and generation_config.json) parsed as the worker parses them, with a missing or ill-typed
    field a CheckpointError naming the file rather than a bare KeyError or ValueError."""
    try:
        return ModelConfig.from_dir(path)
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, InvalidArgumentError):
            raise
        raise CheckpointError(f"{os.path.join(path, 'config.json')}: {type(e).__name__} {e} while reading it: a "
                              "required field is missing or not a number", path=path) from None


def _dtype_name(dtype: str, cfg: ModelConfig, tensors: dict) -> str:
    """The dtype the worker runs the model in, as loader.resolve_dtype resolves it: `dtype` unless "auto", then
    config.json's, then the checkpoint's first floating tensor's (transformers' rule)."""
    auto = dtype in (None, "auto")
    name = (cfg.torch_dtype or checkpoint_dtype(tensors)) if auto else str(dtype).replace("torch.", "")
    if name not in DTYPE_BYTES:
        raise InvalidArgumentError(
            f"the checkpoint's dtype is {name} (config.json names none), which the engine does not run: pass dtype "
            f"as one of {', '.join(DTYPE_BYTES)}" if auto else
            f"dtype {dtype!r} is not supported: use auto or one of {', '.join(DTYPE_BYTES)}", dtype=name)
    return name
