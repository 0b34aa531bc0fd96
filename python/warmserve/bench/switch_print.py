"""What ``warmserve bench switch`` prints: each part's lines, printed by ``switch.main`` as soon as that part is done.

Found in review: the run printed nothing until every part had finished (minutes at the default sizes, more on a
GPU with --sizes-gib 1,4,10), so a slow or stuck part could not be told from a slow machine; and the "weights"
column showed the --sizes-gib asked for, not the size of the checkpoint measured (at least one 88 MB layer and
the 131 MB embedding: --sizes-gib 0.02 measured 0.20 GiB and printed 0.02Gi).
"""

from __future__ import annotations

from warmserve.errors import GiB
from warmserve.bench.switch_kv import MiB


def weights_gib(row: dict) -> str:
    """The size of the checkpoint a row of activation_vs_cold_load measured, in GiB (3 significant digits)."""
    return f"{row['weights_bytes'] / GiB:.3g}"


def _n(part: dict, *names: str) -> str:
    """The repeats behind a part's figures, in the order named: "15/3"."""
    return "/".join(str(part["repeats"][k]) for k in names)


def _say(lines: list[str]) -> None:
    for ln in lines:
        print(ln, flush=True)  # flushed: when stdout is a pipe or a file each part shows the moment it is done


def header(res: dict, args) -> None:
    m = res["machine"]
    _say([f"warmserve bench switch: backend={args.backend}, {m.get('gpu', m.get('cpu', '?'))}, {m['cpus']} cpus, "
          f"medians (n = repeats behind each)"])


def activation_header() -> None:
    _say([f"{'weights':>8} {'tensors':>8} {'activate ms':>12} {'(map KV':>8} {'views)':>7} {'cold load ms':>13} "
          f"{'ratio':>8} {'n act/cold':>10}"])


def activation_row(r: dict) -> None:
    _say([f"{weights_gib(r):>6}Gi {r['tensors']:>8} {r['activation_ms']:>12.3f} {r['activation_map_kv_ms']:>8.3f} "
          f"{r['activation_views_ms']:>7.3f} {r['cold_load_ms']:>13.1f} {r['ratio']:>7.0f}x "
          f"{_n(r, 'activation', 'cold_load'):>10}"])


def skipped(why: str) -> None:
    _say([f"  skipped {why}"])


def move(res: dict) -> None:
    """The move part: move vs memcpy, then the per-GiB primitives (at each --page-mib too)."""
    mv = res["move_vs_memcpy"]
    lines = [f"move 1 GiB {mv['move_ms']:.3f} ms vs memcpy {mv['memcpy_ms']:.1f} ms: {mv['ratio']:.0f}x (goal >= 30x; "
             f"n {_n(mv, 'move', 'memcpy')})",
             "per GiB: " + ", ".join(f"{k[:-3]} {v:.3f} ms (n {res['per_gib_repeats'][k[:-3]]})"
                                     for k, v in res["per_gib"].items())]
    for page, per_gib in res.get("by_page_bytes", {}).items():
        lines.append(f"per GiB at {int(page) // MiB} MiB pages: "
                     + ", ".join(f"{k[:-3]} {v:.3f} ms" for k, v in per_gib.items()))
    _say(lines)


def load(ld: dict) -> None:
    _say([f"load {ld['load_buffer_gbps']:.2f} GB/s (file {ld['load_file_gbps']:.2f}) vs memcpy {ld['memcpy_gbps']:.2f}"
          f" GB/s: {ld['ratio']:.2f} (file {ld['ratio_file']:.2f}; goal >= 0.8; "
          f"n {_n(ld, 'load_buffer', 'load_file', 'memcpy')})"])


def cache(c: dict, cuda: bool) -> None:
    ref = "pinned H2D" if cuda else "memcpy"
    _say([f"host cache: load {c['load_from_cache_gbps']:.2f} GB/s vs {ref} "
          f"{c.get('pinned_copy_gbps', c.get('memcpy_gbps')):.2f} GB/s: {c['ratio']:.2f} (goal >= 0.8); "
          f"fill from file {c['fill_from_file_gbps']:.2f} GB/s ({c['ratio_fill']:.2f}); first hit in a process "
          f"{c['first_hit_in_process_ms']:.0f} ms; {c['threads']} threads, entry under {c['cache_root']}; "
          f"n hit/copy/fill {_n(c, 'load_from_cache', 'copy', 'fill_from_file')}"
          + (f"; BYPASSED {c['bypassed']}x (no room)" if c["bypassed"] else "")])


def model(m: dict) -> None:
    _say([f"load_model {m['checkpoint']} ({m['weight_bytes'] / GiB:.2f} GiB, {m['dtype']}): from files "
          f"{m['plain_gbps']:.2f} GB/s, cache fill {m['fill_gbps']:.2f} GB/s, cache hit {m['hit_gbps']:.2f} GB/s "
          f"(n {_n(m, 'plain', 'fill', 'hit')})"])


def kv(res: dict) -> None:
    lines = []
    for size, r in res.items():
        for page, x in r["by_page_bytes"].items():
            lines.append(f"KV of the {size} ({r['block_bytes'] // MiB} MiB blocks) at {int(page) // MiB} MiB pages, "
                         f"per GiB: grow {x['grow_ms']:.3f} ms, give back {x['give_back_ms']:.3f} ms "
                         f"({x['map_ops']} maps, {x['unmap_ops']} unmaps, {x['backend_calls']} backend calls a "
                         f"round; n {_n(r, 'grow', 'give_back')})")
    _say(lines)
