"""Sizes `bench switch` and `calibrate` accepted and then failed on, mid-run, with a message naming no flag.

Found in review: `bench switch --page-mib 6` or `2048` (whole multiples of 2 MiB) passed the flag checks; the move
part then failed after the 2 MiB measurement ran (or timed fewer bytes than the "per GiB" it reported: 768 MiB pages
time 768 MiB), --json never written. `calibrate --memory-bytes` above the host's free memory made and prefaulted a
pool that large (its measurements and the fresh engine's start time are taken on a pool of the simulated device's
size) and failed with an error naming `capacity_bytes`.
"""

from __future__ import annotations

import pytest

from cli_run import never, own_home, run  # noqa: F401  (own_home: autouse fixture)
from warmserve.bench import calibrate, switch
from warmserve.bench.switch_kv import MiB, page_sizes
from warmserve.errors import GiB, InvalidArgumentError


# ------------------------------------------------------------------------------ 4. bench switch --page-mib

@pytest.mark.parametrize("pm", ["6", "2048", "768", "8,6", "4096", "0", "-2"])
def test_page_sizes_that_do_not_divide_1_gib_are_refused_before_the_first_part(pm, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(switch, "_move_and_primitives", never("the move part"))
    out = tmp_path / "sw.json"
    rc, _, err = run(["bench", "switch", "--parts", "move,kv", "--page-mib", pm, "--repeats", "1", "--json",
                      str(out)], capsys)
    assert rc == 2 and "--page-mib" in err and "1 GiB" in err, err
    assert not out.exists()


def test_page_sizes_that_divide_1_gib_are_accepted():
    assert page_sizes("4,1024") == [2 * MiB, 4 * MiB, 1024 * MiB]
    assert page_sizes("2") == [2 * MiB]
    assert page_sizes("32, 8") == [2 * MiB, 8 * MiB, 32 * MiB]
    with pytest.raises(InvalidArgumentError) as e:
        page_sizes("12")
    assert e.value.fields["flag"] == "--page-mib"


# ------------------------------------------------------------------------------ 5. calibrate --memory-bytes

CAL = ["calibrate", "--models", "llama-20m", "--repeats", "1", "--no-fresh-engine"]


class Reached(Exception):
    """The run got past the checks (to writing the demo checkpoints)."""


def _reached(*a, **k):
    raise Reached


@pytest.mark.parametrize("memory,available,refused", [
    (8 * GiB, 4 * GiB, True),
    (2 ** 50, None, True),  # 1 PiB: above any host's memory, measured for real
    (2 * GiB, 4 * GiB, False),
])
def test_memory_bytes_above_the_hosts_free_memory_is_refused_up_front(memory, available, refused, tmp_path,
                                                                       monkeypatch, capsys):
    import warmserve.engine.demo as demo

    if available is not None:
        monkeypatch.setattr(calibrate, "host_available_bytes", lambda: available, raising=False)
    monkeypatch.setattr(demo, "write_demo_models", _reached if not refused else never("writing the demo models"))
    out = tmp_path / "p.json"
    argv = CAL + ["--out", str(out), "--memory-bytes", str(memory)]
    if not refused:
        with pytest.raises(Reached):
            run(argv, capsys)
        return
    rc, _, err = run(argv, capsys)
    assert rc == 2 and "--memory-bytes" in err and "capacity_bytes" not in err, err
    assert not out.exists()
