"""Time to first token of short chats queued behind long prompts on one engine, with short prompts admitted first
(the scheduler's rule) and with it off (every prompt taken as short: first come, first served), side by side in one
run, alternating, on the demo checkpoint (CPU unless --device says otherwise).

    python bench/engine/short_first.py --model llama-20m --long-tokens 2000 --longs 4 --chats 4 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from warmserve.engine import Engine, SamplingParams, load_model
from warmserve.engine.demo import write_demo_models
from warmserve.engine.scheduler import Scheduler
from warmserve.memory import PagePool


def one_round(lm, longs, chats, short_first: bool) -> dict:
    """Seconds from submission to the first token of each chat and each long prompt, all submitted at once (the
    longs first), greedy, 8 tokens each."""
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    saved = Scheduler._long
    if not short_first:
        Scheduler._long = lambda self, seq: False  # every prompt short: the queue's own order
    try:
        with Engine(lm) as eng:
            t0 = time.perf_counter()
            for i, p in enumerate(longs):
                eng.add_request(f"long{i}", p, params)
            for i, p in enumerate(chats):
                eng.add_request(f"chat{i}", p, params)
            first = {}
            while eng.has_unfinished():
                for o in eng.step():
                    if o.token_ids:
                        first.setdefault(o.request_id, time.perf_counter() - t0)
    finally:
        Scheduler._long = saved
    return first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="llama-20m")
    ap.add_argument("--long-tokens", type=int, default=2000)
    ap.add_argument("--longs", type=int, default=4)
    ap.add_argument("--chats", type=int, default=4)
    ap.add_argument("--chat-tokens", type=int, default=17)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    path = write_demo_models(names=[args.model])[args.model]
    g = torch.Generator().manual_seed(0)
    longs = [torch.randint(0, 1000, (args.long_tokens,), generator=g).tolist() for _ in range(args.longs)]
    chats = [torch.randint(0, 1000, (args.chat_tokens,), generator=g).tolist() for _ in range(args.chats)]
    with PagePool(2 << 30) as pool:
        lm = load_model(path, pool).wait()
        runs = {True: [], False: []}
        for _ in range(args.rounds):
            for short_first in (False, True):  # alternating, so machine noise falls on both
                runs[short_first].append(one_round(lm, longs, chats, short_first))
        lm.close()
    out = {}
    for short_first, rounds in runs.items():
        chat = [r[k] for r in rounds for k in r if k.startswith("chat")]
        long = [r[k] for r in rounds for k in r if k.startswith("long")]
        out["short_first" if short_first else "first_come"] = {
            "chat_ttft_s_median": statistics.median(chat), "chat_ttft_s_max": max(chat),
            "long_ttft_s_median": statistics.median(long), "long_ttft_s_max": max(long)}
    for name, r in out.items():
        print(f"{name:<12} chats' TTFT median {r['chat_ttft_s_median']:.2f} s (max {r['chat_ttft_s_max']:.2f}); "
              f"longs' median {r['long_ttft_s_median']:.2f} s (max {r['long_ttft_s_max']:.2f})")
    ratio = out["first_come"]["chat_ttft_s_median"] / out["short_first"]["chat_ttft_s_median"]
    print(f"chats' median TTFT, first come / short first: {ratio:.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": out, "chat_ttft_ratio": ratio}, f, indent=1)


if __name__ == "__main__":
    main()
