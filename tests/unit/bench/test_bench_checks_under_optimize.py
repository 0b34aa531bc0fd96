"""The benchmarks' checks of what they measured hold under `python -O`, which strips ``assert``. Found in review:
`bench switch --parts kv` called its KV grow inside an assert, so under -O it timed a grow that never ran and printed
"grow 0.002 ms, give back 0.020 ms (0 maps, 0 unmaps)" per GiB (1.7 and 2.6 ms with 128 maps and unmaps without
-O), a give-back goal met by nothing; the other checks (bytes loaded, activation copying nothing) vanished too."""

from __future__ import annotations

import ast
import glob
import json
import os
import subprocess
import sys

import pytest

from warmserve import bench
from warmserve.bench.self_check import MeasurementCheckError, check


def test_bench_switch_kv_under_python_O_maps_and_unmaps_what_it_times(tmp_path):
    out = tmp_path / "kv.json"
    r = subprocess.run([sys.executable, "-O", "-m", "warmserve", "bench", "switch", "--parts", "kv", "--repeats", "1",
                        "--json", str(out)], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, WARMSERVE_HOME=str(tmp_path / "home")))
    assert r.returncode == 0, r.stderr[-3000:]
    runs = [run for size in json.loads(out.read_text())["kv_give_back"].values()
            for run in size["by_page_bytes"].values()]
    assert runs and all(run["map_ops"] > 0 and run["unmap_ops"] > 0 for run in runs), runs  # before: 0 and 0


def test_no_benchmark_checks_with_assert():
    """Every check of a measurement goes through ``check``: an ``assert`` statement anywhere in the benchmarks would
    vanish under -O again."""
    found = []
    for path in sorted(glob.glob(os.path.join(os.path.dirname(bench.__file__), "*.py"))):
        found += [f"{os.path.basename(path)}:{n.lineno}" for n in ast.walk(ast.parse(open(path).read()))
                  if isinstance(n, ast.Assert)]
    assert found == [], found


def test_a_failed_check_says_what_and_that_no_figures_are_reported():
    with pytest.raises(MeasurementCheckError, match="the KV grow mapped 3 of 4 blocks: a check of the measurement "
                                                    "failed, so its figures are not reported") as e:
        check(False, "the KV grow mapped 3 of 4 blocks", blocks=3)
    assert e.value.blocks == 3
    check(True, "not raised")
