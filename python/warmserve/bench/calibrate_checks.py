"""`warmserve calibrate`'s checks of its flags before it measures, and of what it measured (calibrate.py runs them).

Found in review: argument errors came only after about 6 s of importing torch, so the checks that need no torch run
here before it; --decode-batches 100000 failed making a 1.5 TiB host pool, naming capacity_bytes (no calibrate flag);
a decode table with a larger batch measured faster than a smaller one was written with nothing said.
"""

from __future__ import annotations

import sys

from warmserve.errors import InvalidArgumentError, fmt_bytes
from warmserve.geometry import PAGE_BYTES

DEFAULT_MODELS = ("llama-20m", "qwen2-30m", "llama-90m")
#: The prompt of each decode run's sequences, tokens.
DECODE_PROMPT_TOKENS = 16
#: The sequences of the long-context decode run, at most (the largest --decode-batches up to it).
CONTEXT_BATCH = 4


def _ints(s: str, flag: str, example: str) -> list[int]:
    """A list flag's comma-separated integers >= 1, sorted, or InvalidArgumentError naming ``flag`` (found in review:
    "expected integers >= 1, got '0'" did not say which of --prefill-tokens and --decode-batches was wrong)."""
    try:
        out = sorted({int(x) for x in s.split(",") if x.strip()})
    except ValueError:
        raise InvalidArgumentError(f"{flag} {s!r}: expected comma-separated integers, e.g. {flag} {example}",
                                   flag=flag, value=s) from None
    if not out or out[0] < 1:
        raise InvalidArgumentError(f"{flag} {s!r}: expected integers >= 1, e.g. {flag} {example}", flag=flag, value=s)
    return out


def check_args(args, avail: int | None) -> tuple[list[str], list[int], list[int]]:
    """The checks of the flags that need no torch, each an InvalidArgumentError naming its flag and value; the
    models, prompt lengths and batches. ``avail``: the host memory a pool can take (``host_available_bytes``). The
    model names and contexts are checked against the demos (which import torch) in ``calibrate.main``."""
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if not names:  # found in review: "max() arg is an empty sequence"
        raise InvalidArgumentError(f"--models {args.models!r}: name at least one demo model, e.g. "
                                   f"--models {','.join(DEFAULT_MODELS)}", flag="--models")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # found in review: --models llama-20m,llama-20m measured it twice
        raise InvalidArgumentError(f"--models {args.models!r}: {', '.join(twice)} named more than once: name each "
                                   f"model once, e.g. --models {','.join(dict.fromkeys(names))}", flag="--models",
                                   value=args.models, repeated=twice)
    if args.memory_bytes < 0:  # found in review: -5 was measured and written as the profile's gpu.memory_bytes
        raise InvalidArgumentError(f"--memory-bytes {args.memory_bytes}: must be >= 0 (0: a CPU worker's budget "
                                   f"for these models)", flag="--memory-bytes", value=args.memory_bytes)
    # found in review: one joint message for all four named neither the flag given nor its value
    for flag, v in (("--threads", args.threads), ("--repeats", args.repeats), ("--decode-steps", args.decode_steps),
                    ("--parallel", args.parallel)):
        if v < 1:
            raise InvalidArgumentError(f"{flag} {v}: must be >= 1", flag=flag, value=v)
    # Found in review: a --memory-bytes above free RAM failed creating the pool, naming `capacity_bytes`. The pool is
    # made at that size, every page touched, on purpose: steps map KV blocks while it has room, and a fresh engine's
    # start (engine_init_s) includes making it (--parallel N: N at once), so a smaller pool would measure otherwise.
    copies = pool_copies(args)
    if avail is not None and args.memory_bytes * copies > avail:
        raise InvalidArgumentError(
            f"--memory-bytes {args.memory_bytes}: the measurements run on a pool of this size, every page touched"
            f"{f' ({copies} at once for --parallel)' if copies > 1 else ''}, above this host's available memory "
            f"({avail} bytes): give at most {avail // copies}, or 0 for a CPU worker's budget", flag="--memory-bytes",
            value=args.memory_bytes, available_bytes=avail)
    if args.decode_context_tokens and args.decode_context_tokens <= DECODE_PROMPT_TOKENS:
        raise InvalidArgumentError(f"--decode-context-tokens {args.decode_context_tokens}: must be 0 (no long-context "
                                   f"run) or above the decode table's {DECODE_PROMPT_TOKENS}-token prompts, e.g. 1024",
                                   flag="--decode-context-tokens", value=args.decode_context_tokens)
    return (names, _ints(args.prefill_tokens, "--prefill-tokens", "16,64,256,512"),
            _ints(args.decode_batches, "--decode-batches", "1,2,4,8,16"))


def say(what: str) -> None:
    """A progress line on stderr (the profile's table goes to stdout at the end)."""
    print(f"warmserve calibrate: {what} ...", file=sys.stderr, flush=True)


#: how much shorter than a smaller batch's a larger batch's decode step may measure before calibrate warns: a step
#: that holds more sequences takes no less time, and dips within this are timer noise between near-equal steps
DECODE_DIP_TOLERANCE = 0.02


def decode_dips(models: dict, decode_steps: int) -> list[str]:
    """A warning per model whose decode table has a larger batch measured shorter (by over DECODE_DIP_TOLERANCE)
    than a smaller one, naming both (found in review: on a busy host batch 4 took 31.8 ms, batch 2 47.0 ms, and
    nothing said so). The figures stay as measured. ``decode_steps``: the steps each batch's median is of."""
    out = []
    for name, m in models.items():
        dips, top = [], None  # top: the smaller batch of the longest step so far
        for b, t in m["decode_table"]:
            if top is not None and t * (1 + DECODE_DIP_TOLERANCE) < top[1]:
                dips.append(f"batch {b:g} took {t * 1e3:.1f} ms, batch {top[0]:g} {top[1] * 1e3:.1f} ms")
            if top is None or t > top[1]:
                top = (b, t)
        if dips:
            out.append(f"warmserve calibrate: warning: {name}'s decode table has a larger batch measured with a "
                       f"shorter step ({'; '.join(dips)}): the host was likely busy (written as measured). Rerun on "
                       f"a quieter machine or with more --decode-steps (each step time is the median of "
                       f"--decode-steps {decode_steps}; --repeats does not change the decode table)")
    return out


def pool_copies(args) -> int:
    """How many pools of the measurements' size are made at once: --parallel's fresh engine processes, or one."""
    return args.parallel if args.parallel > 1 and not args.no_fresh_engine else 1


def pool_size(args, largest: int, mem: int, prefill_tokens, decode_batches, avail: int | None) -> int:
    """Bytes of the host page pool the measurements run on: ``mem`` (the simulated device's), or what the runs the
    flags ask for need where that is more: twice the largest model's weights (``largest``), KV for the longest prompt
    and the largest batch (64 tokens a sequence) at 256 KiB a token, 64 spare pages, and the long-context run's KV
    at 64 KiB a token (above any demo model's). Refused, naming the flags and their values, where ``pool_copies``
    such pools are above ``avail`` (found in review: --decode-batches 100000 failed making a 1.5 TiB pool, exit 1,
    saying to lower capacity_bytes, which is no calibrate flag)."""
    pf, db, ctx = max(prefill_tokens), max(decode_batches), args.decode_context_tokens
    # (bytes, what, the flags that set it, the fix)
    parts = [(2 * largest, "twice the largest model's weights", "--models", "leave the largest model out of --models"),
             ((pf + db * 64) * 256 * 1024, f"KV for the largest --prefill-tokens ({pf}) and --decode-batches ({db}) "
              f"x 64 tokens at 256 KiB a token", "--decode-batches and --prefill-tokens",
              f"lower the largest --decode-batches ({db}) or --prefill-tokens ({pf})"),
             (64 * PAGE_BYTES, "64 spare pages", "", "free host memory"),
             (CONTEXT_BATCH * (ctx + args.decode_steps + 2) * 64 * 1024, f"the long-context run's KV, {CONTEXT_BATCH} "
              f"sequences x (--decode-context-tokens {ctx} + --decode-steps {args.decode_steps} + 2) at 64 KiB a "
              f"token", "--decode-context-tokens and --decode-steps",
              f"lower --decode-context-tokens ({ctx}) or --decode-steps ({args.decode_steps})")]
    need = sum(p[0] for p in parts)
    pool = -(-max(mem, need) // PAGE_BYTES) * PAGE_BYTES
    copies = pool_copies(args)
    if avail is None or pool * copies <= avail:
        return pool
    at_once = f", {copies} at once for --parallel {args.parallel}" if copies > 1 else ""
    if need <= mem:  # the pool is the simulated device's memory: the default budget (a given one is checked first)
        what = "whole pages of it" if args.memory_bytes else "a CPU worker's budget for these models"
        raise InvalidArgumentError(
            f"--memory-bytes {args.memory_bytes}: the pool the measurements run on, {fmt_bytes(pool)} ({what}"
            f"{at_once}), is above this host's available memory ({fmt_bytes(avail)}): free "
            f"host memory or give --memory-bytes at most {avail // copies}", flag="--memory-bytes",
            value=args.memory_bytes, pool_bytes=pool, available_bytes=avail)
    _, _, flags, fix = max(parts, key=lambda p: p[0])
    raise InvalidArgumentError(
        f"the host page pool the measurements run on needs {fmt_bytes(pool)} ({pool} bytes{at_once}): "
        + "; ".join(f"{fmt_bytes(p[0])} {p[1]}" for p in parts)
        + f"; above this host's available memory ({fmt_bytes(avail)}): {fix}", flag=flags, pool_bytes=pool,
        available_bytes=avail)
