"""`warmserve models demo`: deterministic random-weight checkpoints in Hugging Face layout.

Each model directory holds config.json, generation_config.json, model.safetensors (or shards with
model.safetensors.index.json when larger than the shard size), tokenizer.json and tokenizer_config.json, so
`transformers` loads the very same files. The tokenizer is a byte-level BPE trained with `tokenizers` on a
corpus generated from a fixed seed; weights come from a torch generator seeded by the model name. Writing again
with the same arguments produces the same bytes, and an up-to-date directory is skipped.

Every demo model's KV block (256 tokens x all layers x K and V, float32) is a whole number of 2 MiB pages.

GPU-sized demos (`warmserve models demo --size 1b|7b`, SIZED_MODELS): a Llama-3.2-1B-shaped and a
Llama-3-8B-shaped checkpoint (7.0B parameters with the demo's 8192-token vocabulary) in bfloat16, with weights
drawn on the target device (a GPU when there is one) and written shard by shard (2 GiB safetensors shards), so
the 14 GB of the 7b take seconds of generation and the disk's write time. They are not part of DEMO_MODELS:
`warmserve models demo` with no --size writes exactly what it wrote before.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import stat
import zlib
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from warmserve.config import default_demo_dir
from warmserve.engine.arch import hf_tensor_shapes
from warmserve.engine.config import DTYPE_NAMES, ModelConfig
from warmserve.errors import InvalidArgumentError

# torch where weights are drawn, not at import: found in review, `warmserve models demo` imported it (2 s of CPU)
# only to refuse a bad flag, and a caller whose demo models were written already paid for it too
if TYPE_CHECKING:
    import torch

VOCAB_SIZE = 8192
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
#: Largest safetensors file written; bigger models are sharded with an index, as on the Hub.
SHARD_BYTES = 512 << 20


@dataclass(frozen=True)
class DemoSpec:
    """One demo checkpoint: the config.json fields that differ between models."""

    #: "llama", "qwen2" or "mistral".
    model_type: str
    #: Residual width (elements).
    hidden_size: int
    #: SwiGLU width (elements).
    intermediate_size: int
    #: Decoder layers.
    num_hidden_layers: int
    #: Query heads.
    num_attention_heads: int
    #: Key/value heads.
    num_key_value_heads: int
    #: lm_head shares the embedding.
    tie_word_embeddings: bool = False
    #: RoPE base.
    rope_theta: float = 10000.0
    #: rope_scaling dict as config.json carries it, as sorted (key, value) pairs; () for none.
    rope_scaling: tuple = ()
    #: Context length (tokens).
    max_position_embeddings: int = 2048
    #: Sliding window (tokens) for Mistral; 0 = none.
    sliding_window: int = 0
    #: Embedding rows.
    vocab_size: int = VOCAB_SIZE
    #: Extra config.json fields, as sorted (key, value) pairs.
    extra: tuple = field(default=())


DEMO_MODELS: dict[str, DemoSpec] = {
    "llama-20m": DemoSpec("llama", 384, 1024, 8, 6, 2),
    "qwen2-30m": DemoSpec("qwen2", 512, 1536, 8, 8, 4, tie_word_embeddings=True, rope_theta=1e6,
                          max_position_embeddings=4096),
    "llama-90m": DemoSpec("llama", 768, 2048, 12, 12, 4, rope_theta=5e5,
                          rope_scaling=(("factor", 4.0), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
                                        ("original_max_position_embeddings", 1024), ("rope_type", "llama3")),
                          max_position_embeddings=4096),
    "qwen2-190m": DemoSpec("qwen2", 1024, 2816, 16, 16, 4, tie_word_embeddings=True, rope_theta=1e6,
                           max_position_embeddings=4096),
    "llama-300m": DemoSpec("llama", 1024, 2816, 24, 16, 8,
                           rope_scaling=(("factor", 2.0), ("rope_type", "linear")), max_position_embeddings=4096),
}
#: The two small models tests use (one per architecture).
SMALL_MODELS = ("llama-20m", "qwen2-30m")

#: GPU-sized demos by --size: (directory name, spec). Shapes of Llama-3.2-1B (untied, 1.0B parameters) and
#: Llama-3-8B (7.0B parameters with this vocabulary); bf16 KV blocks of 8 and 32 MiB (whole pages).
SIZED_MODELS: dict[str, tuple[str, DemoSpec]] = {
    "1b": ("llama-1b", DemoSpec("llama", 2048, 8192, 16, 32, 8, rope_theta=5e5, max_position_embeddings=8192)),
    "7b": ("llama-7b", DemoSpec("llama", 4096, 14336, 32, 32, 8, rope_theta=5e5, max_position_embeddings=8192)),
}


def demo_spec(name: str) -> DemoSpec | None:
    """The spec of a demo checkpoint by its directory name, small (``DEMO_MODELS``) or sized (``SIZED_MODELS``);
    None for a name that is neither."""
    if name in DEMO_MODELS:
        return DEMO_MODELS[name]
    return next((spec for n, spec in SIZED_MODELS.values() if n == name), None)


#: Dtype on disk of the sized demos.
SIZED_DTYPE = "bfloat16"
#: Shard size of the sized demos (bytes): few files, each written as soon as its tensors are drawn.
SIZED_SHARD_BYTES = 2 << 30

ARCH = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}


def config_dict(spec: DemoSpec, dtype: str = "float32") -> dict:
    eos, bos = 0, 0  # <|endoftext|> is both, as in GPT-2 style vocabularies
    cfg = {
        "architectures": [ARCH[spec.model_type]],
        "model_type": spec.model_type,
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "head_dim": spec.hidden_size // spec.num_attention_heads,
        "hidden_act": "silu",
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": 1e-6,
        "rope_theta": spec.rope_theta,
        "rope_scaling": dict(spec.rope_scaling) or None,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": dtype,
        "initializer_range": 0.02,
        "use_cache": True,
    }
    if spec.model_type == "llama":
        cfg.update(attention_bias=False, mlp_bias=False)
    if spec.model_type == "qwen2":
        cfg.update(use_sliding_window=False, sliding_window=None, max_window_layers=spec.num_hidden_layers)
    if spec.model_type == "mistral":
        cfg.update(sliding_window=spec.sliding_window or None)
    cfg.update(dict(spec.extra))
    return cfg


# ---- tokenizer ---------------------------------------------------------------------------------------------------

_SYLLABLES = ("ka", "lo", "mi", "ne", "sa", "to", "ru", "vi", "de", "pa", "or", "en", "th", "qu", "st", "ar", "el",
              "in", "on", "is", "an", "re", "er", "at", "co", "de", "ly", "ing", "tion", "ment", "able", "ex", "pro",
              "con", "un", "sh", "ch", "ou", "ea", "ai", "ph", "gr", "bl", "cr", "fl", "sp", "tr", "wh", "ze", "xo")


def corpus(n_lines: int = 12000, seed: int = 1234) -> list[str]:
    """Deterministic text: pseudo-words, numbers, punctuation, chat markup and code-like lines."""
    rng = random.Random(seed)
    words = sorted({"".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(6000)})
    lines = []
    for i in range(n_lines):
        kind = i % 5
        ws = [rng.choice(words) for _ in range(rng.randint(4, 16))]
        if kind == 0:
            lines.append(" ".join(ws).capitalize() + rng.choice((".", "?", "!", ",", ";")))
        elif kind == 1:
            lines.append(f"{ws[0]} = {rng.randint(0, 99999)} + {ws[1]}({ws[2]}, {rng.random():.3f})")
        elif kind == 2:
            lines.append(f"<|im_start|>user\n{' '.join(ws)}<|im_end|>")
        elif kind == 3:
            lines.append(" ".join(w.upper() if rng.random() < 0.1 else w for w in ws) + f" {rng.randint(1900, 2030)}.")
        else:
            lines.append("    def " + "_".join(ws[:3]) + "(self):  # " + " ".join(ws[3:]))
    return lines


SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")


def build_tokenizer(vocab_size: int = VOCAB_SIZE):
    """A byte-level BPE trained on corpus(); the same bytes every time."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    # The GPT-4/Qwen2 split (letters, single digits, punctuation runs, newlines) then bytes: the pipeline
    # transformers' Qwen2Tokenizer rebuilds, so AutoTokenizer agrees with tokenizer.json for every demo model.
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    return tok


def tokenizer_config() -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }


# ---- weights -----------------------------------------------------------------------------------------------------

#: std of the final norm's gain in a model with a tied embedding (see final_norm_gain)
TIED_FINAL_NORM_STD = 0.02


def final_norm_gain(cfg: ModelConfig) -> tuple[float, float]:
    """(mean, std) of the final norm's weight. Near 1 like every norm, except under a tied embedding: there the
    unit-scale embedding is the output head too, and the final norm's gain is the only factor between the hidden
    state and the logits. Near 1 it left logits with a std of 23, led by the input token's own row (its square is
    positive under a positive gain), and greedy decoding repeated one token forever. Zero-mean, std 0.02, the head
    E x gain has the untied demos' 0.02 head scale (logits about as spread as llama-20m's) and no pull towards the
    input token."""
    return (0.0, TIED_FINAL_NORM_STD) if cfg.tie_word_embeddings else (1.0, 0.1)


def _norm_gain(cfg: ModelConfig, name: str) -> tuple[float, float]:
    return final_norm_gain(cfg) if name == "model.norm.weight" else (1.0, 0.1)


def random_weights(cfg: ModelConfig, seed: int, dtype: torch.dtype):
    """Yields (name, tensor): normal(0, 0.02) matrices, norms near 1 (the final one see final_norm_gain), small
    biases; float32 draws, then cast."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for name, shape in hf_tensor_shapes(cfg).items():
        if name.endswith("norm.weight"):
            mean, std = _norm_gain(cfg, name)
            t = mean + std * torch.randn(shape, generator=g)
        elif name.endswith(".bias"):
            t = 0.05 * torch.randn(shape, generator=g)
        elif "embed_tokens" in name:
            t = torch.randn(shape, generator=g)  # unit-scale embeddings: distinct, confident logits
        else:
            t = 0.02 * torch.randn(shape, generator=g)
        yield name, t.to(dtype)


def device_random_weights(cfg: ModelConfig, seed: int, dtype: torch.dtype, device: str):
    """Like random_weights (same distributions) but drawn on `device` from its own generator, one tensor at a
    time, and returned on the CPU: a GPU draws the 7b's 7e9 values in well under a second."""
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    for name, shape in hf_tensor_shapes(cfg).items():
        t = torch.randn(shape, generator=g, device=device, dtype=torch.float32)
        if name.endswith("norm.weight"):
            mean, std = _norm_gain(cfg, name)
            t.mul_(std).add_(mean)
        elif name.endswith(".bias"):
            t.mul_(0.05)
        elif "embed_tokens" not in name:
            t.mul_(0.02)
        yield name, t.to(dtype).cpu()
        del t


def plan_shards(cfg: ModelConfig, esize: int, shard_bytes: int) -> list[list[str]]:
    """Tensor names per shard, in checkpoint order: a shard is closed when the next tensor would pass
    shard_bytes (a tensor larger than that gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for tname, shape in hf_tensor_shapes(cfg).items():
        nbytes = esize
        for d in shape:
            nbytes *= d
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tname)
        size += nbytes
    return shards


def _fingerprint(cfg: dict, dtype: str) -> str:
    # format 3: generation_config.json also ends a generation at <|im_end|>; format 4, tied embeddings only (the
    # others' bytes did not change, so their checkpoints, the 14 GB sized ones among them, are not rewritten): the
    # final norm's gain of final_norm_gain
    fmt = 4 if cfg.get("tie_word_embeddings") else 3
    blob = json.dumps({"config": cfg, "dtype": dtype, "format": fmt}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _stamp(path: str) -> str | None:
    """The fingerprint a written checkpoint's stamp file holds (None: no stamp)."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return f.read().strip()


def write_checkpoint(out_dir: str, name: str, cfg_dict: dict, dtype: str = "float32", tokenizer=None,
                     shard_bytes: int = SHARD_BYTES, device: str | None = None) -> str:
    """Write one random-weight checkpoint for an arbitrary Llama-family config.json dict; returns its path.

    device: None draws the weights with the CPU generator of random_weights (the bytes every demo has had);
    "cuda" or "cpu" uses device_random_weights (other bytes, same distributions; fast on a GPU). Each shard is
    written as soon as its tensors are drawn, so memory holds one shard at a time."""
    path = os.path.join(out_dir, name)
    cfg_dict = dict(cfg_dict, torch_dtype=dtype)
    stamp = os.path.join(path, ".warmserve-demo")
    fp = _fingerprint(cfg_dict, dtype)
    if _stamp(stamp) == fp:
        return path
    try:
        with _writer_lock(path):
            _refuse_foreign(path, stamp)
            if _stamp(stamp) != fp:  # another process may have written it while this one waited
                _write_checkpoint(path, cfg_dict, dtype, tokenizer, shard_bytes, device, stamp, fp)
    except InvalidArgumentError:
        raise
    except Exception as e:  # OSError, or safetensors' own error for its file's write
        if not isinstance(e, OSError) and type(e).__name__ != "SafetensorError":
            raise
        raise _unwritable(path, e) from None
    return path


def _unwritable(path: str, e: Exception) -> InvalidArgumentError:
    """A checkpoint that could not be written (a full or read-only disk). Found in review: `models demo --out` on a
    full disk, and `serve` with $WARMSERVE_HOME there, ended in a traceback from safetensors' writer."""
    from warmserve.outputs import free_space_words

    why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    return InvalidArgumentError(
        f"cannot write the demo checkpoint {path} ({why}{free_space_words(path)}); the files it wrote are removed and "
        "it is marked unfinished, so no later run takes it for whole. Fix: free space there or make it writable, or "
        "write elsewhere (`warmserve models demo --out DIR`; `warmserve serve` writes under $WARMSERVE_HOME/demo)",
        path=path)


def _refuse_foreign(path: str, stamp: str) -> None:
    """Refuse to write into a directory that holds files but no demo stamp: a user's own checkpoint (found in
    review: `models demo --size 7b --out ~/models` deleted the shards and index of a real ``llama-7b`` and
    overwrote its config and tokenizer). A demo being written carries its stamp from the start (``_write_checkpoint``),
    so an interrupted one is still rewritten."""
    if os.path.isdir(path) and not os.path.exists(stamp) and any(not f.startswith(".") for f in os.listdir(path)):
        raise InvalidArgumentError(f"{path} holds files but is no demo checkpoint (no {os.path.basename(stamp)} "
                                   "stamp): nothing was written, so as not to overwrite it; pick another --out "
                                   "folder, or delete that directory if it is a demo written by an older version",
                                   path=path)


@contextlib.contextmanager
def _writer_lock(path: str):
    """One writer of a checkpoint directory at a time, across processes: two processes that find it missing (the
    test suite's parallel workers, a benchmark started beside a server) would otherwise each delete the shards
    the other is writing. An flock on a sibling file, released when the file closes (or its process dies)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            from warmserve.outputs import flock_holder

            # Found in review (two servers of one $WARMSERVE_HOME): the second waited without a word, its last line
            # "first run: ~20 s", for as long as the other wrote (a 7b demo: minutes), or for ever behind a stopped one.
            logging.getLogger("warmserve.engine").warning("%s", waiting_words(path, flock_holder(f.fileno())))
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


#: What the line a writer says while it waits for another starts with: `warmserve serve` passes it on from its child.
WAITING_WORDS = "warmserve: waiting for"


def waiting_words(path: str, holder: int | None) -> str:
    """The line a second writer of the checkpoint ``path`` says while process ``holder`` (None: unknown) writes it."""
    who = "another process"
    if holder:
        try:
            with open(f"/proc/{holder}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmd = ""
        who = f"process {holder}" + (f" ({cmd[:160]})" if cmd else "")
    stop = f"`kill {holder}`" if holder else "stop it"
    return (f"{WAITING_WORDS} {who}, which is writing the demo checkpoint {path}: this one takes it once written "
            f"(it is not written twice). If that process is stuck or stopped (Ctrl-Z), {stop}: this one then writes it")


def _write_checkpoint(path: str, cfg_dict: dict, dtype: str, tokenizer, shard_bytes: int, device: str | None,
                      stamp: str, fp: str) -> None:
    """write_checkpoint's writing, under its lock; the stamp last, so a reader never takes a half-written one."""
    import torch

    from warmserve.engine.config import DTYPES

    name = os.path.basename(path)
    os.makedirs(path, exist_ok=True)
    with open(stamp, "w") as f:  # marks the directory a demo's while it is written: no fingerprint matches it
        f.write("writing\n")
    for f in os.listdir(path):
        if f.endswith(".safetensors") or f.endswith(".safetensors.index.json"):
            os.remove(os.path.join(path, f))
    cfg = ModelConfig.from_dict(cfg_dict)
    tdtype = DTYPES[dtype]
    seed = zlib.crc32(name.encode())
    weights = random_weights(cfg, seed, tdtype) if device is None else device_random_weights(cfg, seed, tdtype, device)
    plan = plan_shards(cfg, torch.empty((), dtype=tdtype).element_size(), shard_bytes)
    meta = {"format": "pt"}
    try:
        _write_files(path, cfg_dict, cfg, weights, plan, meta, tokenizer)
    except BaseException:
        # the weights written so far are taken back: a full disk is left as it was found (the stamp, "writing",
        # stays, so the next run writes it all again)
        for f in os.listdir(path):
            if f.endswith(".safetensors") or f.endswith(".safetensors.index.json"):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(path, f))
        raise
    with open(stamp, "w") as f:
        f.write(fp)


def _write_files(path: str, cfg_dict: dict, cfg: ModelConfig, weights, plan: list, meta: dict, tokenizer) -> None:
    """The checkpoint's files, the stamp aside (``_write_checkpoint``)."""
    from safetensors.torch import save_file

    weight_map, total = {}, 0
    for k, names in enumerate(plan):
        shard = {}
        for tname in names:
            got, t = next(weights)
            assert got == tname, (got, tname)  # both walk hf_tensor_shapes in order
            shard[tname] = t
            total += t.numel() * t.element_size()
        fname = "model.safetensors" if len(plan) == 1 else f"model-{k + 1:05d}-of-{len(plan):05d}.safetensors"
        save_file(shard, os.path.join(path, fname), metadata=meta)
        # safetensors writes its file 0600: made as readable as its folder (0755 under umask 022: 0644, as the
        # folder's other files; found in review, a worker running as another user could not read a demo's weights)
        os.chmod(os.path.join(path, fname), stat.S_IMODE(os.stat(path).st_mode) & 0o666)
        weight_map.update((tname, fname) for tname in names)
        del shard
    if len(plan) > 1:
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    del weight_map
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg_dict, f, indent=2)
    tok = tokenizer if tokenizer is not None else build_tokenizer(min(VOCAB_SIZE, cfg.vocab_size))
    # The chat template ends every turn with <|im_end|>, so a generation ends there too, as Qwen2's own
    # generation_config.json lists both <|im_end|> and <|endoftext|> (found in review: a chat ran past its turn).
    eos_ids = [cfg_dict.get("eos_token_id"), tok.token_to_id("<|im_end|>")]
    with open(os.path.join(path, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": cfg_dict.get("bos_token_id"),
                   "eos_token_id": [i for i in eos_ids if i is not None], "do_sample": False}, f, indent=2)
    tok.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config(), f, indent=2)


def write_demo_models(out_dir: str | None = None, names=None, dtype: str = "float32") -> dict[str, str]:
    """Write the demo checkpoints (all, or `names`) under out_dir; returns name -> directory."""
    out_dir = out_dir or default_demo_dir()
    names = list(DEMO_MODELS) if names is None else list(names)
    sized = {SIZED_MODELS[k][0]: k for k in SIZED_MODELS}
    out = {n: write_sized_demo(sized[n], out_dir) for n in names if n in sized}  # by name too (bench --models)
    names = [n for n in names if n not in sized]
    unknown = [n for n in names if n not in DEMO_MODELS]
    if unknown:
        from warmserve.errors import UnknownModelError
        raise UnknownModelError(f"unknown demo model(s) {unknown}: choose from {', '.join(DEMO_MODELS)}",
                                names=unknown)
    if dtype not in DTYPE_NAMES:
        from warmserve.errors import InvalidArgumentError
        raise InvalidArgumentError(f"dtype {dtype!r}: use one of {', '.join(DTYPE_NAMES)}", dtype=dtype)
    tok = None
    for n in names:
        cfg = config_dict(DEMO_MODELS[n], dtype)
        path = os.path.join(out_dir, n)
        stamp = os.path.join(path, ".warmserve-demo")
        if tok is None and _stamp(stamp) != _fingerprint(cfg, dtype):
            tok = build_tokenizer()
        out[n] = write_checkpoint(out_dir, n, cfg, dtype, tokenizer=tok)
    return out


def write_sized_demo(size: str, out_dir: str | None = None, device: str | None = None) -> str:
    """Write the GPU-sized demo `size` ("1b" or "7b", SIZED_MODELS) in bf16; returns its directory. device:
    where the weights are drawn (default: cuda when torch sees a GPU, else cpu; the bytes differ between the
    two, the distributions do not). Skipped when up to date."""
    if size not in SIZED_MODELS:
        from warmserve.errors import UnknownModelError
        raise UnknownModelError(f"unknown demo size {size!r}: choose from {', '.join(SIZED_MODELS)}", names=[size])
    name, spec = SIZED_MODELS[size]
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    # Before any folder is made. Found in review: cuda without a GPU, or --device banana, was a torch traceback
    # (exit 1) that left an empty checkpoint folder behind.
    from warmserve.worker.main import check_cuda, check_device

    device = check_device(device)
    check_cuda(device)
    cfg = config_dict(spec, SIZED_DTYPE)
    return write_checkpoint(out_dir or default_demo_dir(), name, cfg,
                            SIZED_DTYPE, shard_bytes=SIZED_SHARD_BYTES, device=device)


def spec_summary(name: str) -> dict:
    sized = {n: spec for n, spec in SIZED_MODELS.values()}
    spec = sized[name] if name in sized else DEMO_MODELS[name]
    cfg = ModelConfig.from_dict(config_dict(spec))
    return {"name": name, "architecture": cfg.architecture, "params": cfg.num_params(), **asdict(spec)}


# ---- command line ------------------------------------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("--out", default=None,
                        help=f"output directory (default {default_demo_dir()}; $WARMSERVE_HOME/demo)")
    parser.add_argument("--models", nargs="*", default=None, help=f"subset of: {' '.join(DEMO_MODELS)}")
    parser.add_argument("--dtype", default=None, choices=list(DTYPE_NAMES),
                        help="weight dtype on disk of the small demos (default float32; --size writes bfloat16)")
    parser.add_argument("--size", default=None, choices=list(SIZED_MODELS),
                        help="write one GPU-sized demo instead (bf16: 1b = Llama-3.2-1B shape, 7b = Llama-3-8B shape)")
    parser.add_argument("--device", default=None, help="with --size: where to draw the weights (default: cuda if "
                        "available, else cpu)")


def check_flags(args) -> None:
    """Refuse, naming them, the flags a run would take and ignore (found in review, each exit 0: --models with no
    name wrote nothing and said done; --device without --size was dropped; --size dropped --models and --dtype), and
    an --out that cannot be a folder (found in review: a bare FileExistsError or NotADirectoryError, exit 1)."""
    from warmserve.errors import InvalidArgumentError
    from warmserve.outputs import check_output_folder

    if args.out is not None and not args.out.strip():  # found in review: "" wrote all five into the default folder
        raise InvalidArgumentError(f'--out {args.out!r} names no folder (an unset variable in --out "$DIR"?): give '
                                   f"one, or leave --out out for {default_demo_dir()}", flag="--out")
    size, device = getattr(args, "size", None), getattr(args, "device", None)
    if args.models is not None and not args.models:
        raise InvalidArgumentError(f"--models names no model: give one or more of {', '.join(DEMO_MODELS)}, or leave "
                                   f"it out for all", flag="--models")
    if device is not None and not size:
        raise InvalidArgumentError(f"--device {device}: only --size draws its weights on a device (the small demos "
                                   f"are drawn on the CPU): add --size {' or '.join(SIZED_MODELS)}, or drop --device",
                                   flag="--device")
    dropped = [f for f, v in (("--models", args.models), ("--dtype", args.dtype)) if size and v is not None]
    if dropped:
        raise InvalidArgumentError(f"--size {size} with {' and '.join(dropped)}: --size writes one model, "
                                   f"{SIZED_MODELS[size][0]}, in {SIZED_DTYPE}: drop {' and '.join(dropped)}, or "
                                   f"drop --size to write the small demos", flag=dropped[0], flags=dropped)
    out = args.out or default_demo_dir()
    try:  # found in the locale review: a bare UnicodeEncodeError from the writer, after the folder was made
        out.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError(
            f"{'--out' if args.out else 'the demo folder'} {os.fsencode(out)!r} holds bytes that are not UTF-8: "
            "workers are sent checkpoint paths as UTF-8 text, so no server could load from it; give a folder whose "
            "path is UTF-8 (--out, or WARMSERVE_HOME)", flag="--out") from None
    check_output_folder("--out", args.out)  # last: a run refused over another flag makes no folder


def main(args) -> int:
    import time

    t0 = time.perf_counter()
    check_flags(args)
    if getattr(args, "size", None):
        paths = {SIZED_MODELS[args.size][0]: write_sized_demo(args.size, args.out, getattr(args, "device", None))}
    else:
        paths = write_demo_models(args.out, args.models, args.dtype or "float32")
    for n, p in paths.items():
        s = spec_summary(n)
        print(f"{n:<12} {s['architecture']:<20} {s['params'] / 1e6:6.1f}M params  {p}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0
