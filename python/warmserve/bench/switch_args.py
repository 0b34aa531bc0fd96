"""What ``warmserve bench switch`` checks of its flags before the first part runs.

Found in review: a bad --checkpoint, --cache-gib or --page-mib was met only when its part's turn came, after the
parts before it had measured (minutes at the default sizes); the run then failed, --json was never written, and the
messages of the last two named no flag. Every check here raises InvalidArgumentError naming the flag (exit 2).
"""

from __future__ import annotations

import glob
import math
import os

from warmserve.bench.switch_kv import MiB
from warmserve.errors import GiB, InvalidArgumentError

PARTS = ("activation", "move", "load", "cache", "model", "kv")


def check_args(args) -> tuple[set[str], list[float]]:
    """(the parts to run, --sizes-gib in GiB), or InvalidArgumentError naming the first bad flag."""
    from warmserve.bench.switch_kv import page_sizes
    from warmserve.outputs import check_at_least, check_output, check_plot, parse_numbers

    sizes = parse_numbers(args.sizes_gib, "--sizes-gib", positive=True, example="0.25,1,4")
    parts = {x.strip() for x in str(args.parts).split(",") if x.strip()}
    unknown = parts - set(PARTS)
    if unknown:
        raise InvalidArgumentError(f"--parts: unknown {sorted(unknown)}; choose from {', '.join(PARTS)}",
                                   flag="--parts", value=sorted(unknown))
    if "model" in parts:
        check_checkpoint(args.checkpoint)
    check_at_least("--repeats", args.repeats)  # medians over none fail only after the first parts ran
    page_sizes(args.page_mib)  # the move and kv parts' page sizes
    # the cache part loads whole 2 MiB pages of it: below one there is nothing to time (a division by zero)
    if not math.isfinite(args.cache_gib) or int(args.cache_gib * GiB) < 2 * MiB:
        raise InvalidArgumentError(f"--cache-gib {args.cache_gib:g}: the cache part loads whole 2 MiB pages; give "
                                   f"at least 0.002 GiB, e.g. --cache-gib 1", flag="--cache-gib",
                                   value=args.cache_gib)
    if args.backend == "cuda":  # found in review: without a GPU, torch.cuda.set_device's AttributeError traceback
        from warmserve.worker.main import check_cuda

        check_cuda(f"cuda:{args.device}", fix="use --backend host")
    check_output("--json", args.json)
    if "activation" in parts:  # the plot shows that part alone: without it nothing is drawn
        check_plot("--plot", args.plot)
    return parts, sizes


def check_checkpoint(path: str | None) -> None:
    """The model part's --checkpoint: a folder with a config.json and *.safetensors (what engine.load_model reads)."""
    if not path:
        raise InvalidArgumentError("--parts model needs --checkpoint DIR (e.g. one written by `warmserve models demo "
                                   "--size 1b`)", flag="--checkpoint")
    fix = "give a checkpoint folder, e.g. one written by `warmserve models demo --size 1b`"
    if not os.path.exists(path):
        why = "no such folder"
    elif not os.path.isdir(path):
        why = "not a folder"
    elif not os.path.isfile(os.path.join(path, "config.json")):
        why = "no config.json in it"
    elif not glob.glob(os.path.join(glob.escape(path), "*.safetensors")):
        why = "no *.safetensors in it"
    else:
        return
    raise InvalidArgumentError(f"--checkpoint {path}: {why}; {fix}", flag="--checkpoint", path=path)
