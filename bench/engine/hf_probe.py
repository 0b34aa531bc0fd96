"""Where `transformers`' decode time goes on a GPU: generate() of one checkpoint in bfloat16 and float32 at batch 1
(2 and 33 new tokens, 3 runs each: the difference / 31 is a decode token's time), then a plain forward loop with
its KV cache (no generate() machinery). Written to explain the `transformers` side of `warmserve bench engine
--device cuda` (bench/engine/README.md, 2026-12-04); prints text only.

Usage: python bench/engine/hf_probe.py CHECKPOINT_DIR [--prompt-tokens 128]
"""

import argparse
import time

import torch
import transformers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    args = ap.parse_args()
    transformers.logging.set_verbosity_error()
    ids = torch.randint(0, 8000, (1, args.prompt_tokens), device="cuda")
    for dtype in (torch.bfloat16, torch.float32):
        m = transformers.AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=dtype).cuda().eval()
        print(dtype, "attn", getattr(m.config, "_attn_implementation", None), flush=True)
        with torch.inference_mode():
            for r in range(3):
                took = {}
                for n in (2, 33):
                    torch.cuda.synchronize()
                    t = time.perf_counter()
                    m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, eos_token_id=None, pad_token_id=0)
                    torch.cuda.synchronize()
                    took[n] = time.perf_counter() - t
                print(f"  run {r}: generate 2 tok {took[2] * 1e3:.1f} ms, 33 tok {took[33] * 1e3:.1f} ms -> "
                      f"{(took[33] - took[2]) / 31 * 1e3:.2f} ms/token", flush=True)
            out = m(ids, use_cache=True)
            tok = out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(32):
                out = m(tok, past_key_values=out.past_key_values, use_cache=True)
                tok = out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
            print(f"  manual forward loop: {(time.perf_counter() - t) / 32 * 1e3:.2f} ms/token")
        del m
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
