"""What ``warmserve bench switch`` checks of its flags before the first part runs.

Found in review: a bad --checkpoint, --cache-gib or --page-mib was met only when its part's turn came, after the
parts before it had measured (minutes at the default sizes); the run then failed, --json was never written, and the
messages of the last two named no flag. A later review found the same of --cache-threads and --cache-root, and a
--plot that --parts left nothing to draw for. Every check here raises InvalidArgumentError naming the flag (exit 2).
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import tempfile

from warmserve.bench.switch_kv import MiB
from warmserve.errors import GiB, InvalidArgumentError

PARTS = ("activation", "move", "load", "cache", "model", "kv")


def device_index(text: str) -> int:
    """--device as the GPU's index: N or cuda:N, as the other commands write a device (found in review: cuda:0
    was refused as an invalid int, though the error for a missing GPU named the device cuda:0)."""
    digits = text[len("cuda:"):] if text.startswith("cuda:") else text
    if not digits.isdigit():
        raise ValueError(text)  # argparse: "invalid device_index value"
    return int(digits)


class DeviceGiven(argparse.Action):
    """--device, noting that it was given (``device_given``): the host backend refuses one, and the default (0)
    cannot tell."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.device, namespace.device_given = values, True


def check_args(args) -> tuple[set[str], list[float]]:
    """(the parts to run, --sizes-gib in GiB), or InvalidArgumentError naming the first bad flag."""
    from warmserve.bench.switch_kv import page_sizes
    from warmserve.outputs import (check_at_least, check_distinct_outputs, check_output, check_output_folder,
                                   check_plot, parse_numbers)

    check_output_folder("--dir", args.dir)  # found in review: a file here was a NotADirectoryError once running
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
    if parts & {"cache", "model"}:  # the parts that load through the host checkpoint cache
        check_cache_flags(args)
    if args.backend == "host" and getattr(args, "device_given", False):  # found in review: taken and not used
        raise InvalidArgumentError(f"--device {args.device} is the GPU of --backend cuda; the host backend has none: "
                                   f"drop --device, or add --backend cuda", flag="--device")
    if args.backend == "cuda":  # found in review: without a GPU, torch.cuda.set_device's AttributeError traceback
        from warmserve.worker.main import check_cuda

        check_cuda(f"cuda:{args.device}", fix="use --backend host")
    check_output("--json", args.json)
    # found in review: --parts move --plot P ran, drew nothing, said nothing and exited 0
    if args.plot and "activation" not in parts:
        raise InvalidArgumentError(f"--plot {args.plot}: the plot draws the activation part, not in --parts "
                                   f"{args.parts}; add activation to --parts or leave out --plot", flag="--plot",
                                   path=args.plot)
    check_distinct_outputs(args.json, args.plot)
    check_plot("--plot", args.plot)
    return parts, sizes


def check_cache_flags(args) -> None:
    """--cache-threads and --cache-root of the cache and model parts. Found in review: both were met only when the
    cache part's turn came (a bare FileNotFoundError for a missing root, --json never written, the cache folder
    left in /dev/shm), and --cache-threads 0 silently meant the default."""
    from warmserve.outputs import check_at_least

    check_at_least("--cache-threads", args.cache_threads)
    root = args.cache_root
    fix = "give an existing folder you can write, e.g. --cache-root /dev/shm (a tmpfs)"
    if not os.path.exists(root):
        why = "no such folder"
    elif not os.path.isdir(root):
        why = "not a folder"
    else:
        try:  # a real file, not os.access: root passes access() on a read-only file system
            fd, probe = tempfile.mkstemp(dir=root, prefix=".warmserve-write-check-")
        except OSError as e:
            why = f"cannot write in it ({e.strerror})"
        else:
            os.close(fd)
            os.unlink(probe)
            return
    raise InvalidArgumentError(f"--cache-root {root}: {why}; {fix}", flag="--cache-root", path=root)


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
