"""`warmserve bench switch` says how many timed runs each median had: activation at least 15, cold loads at most 3,
moves both ways. The JSON had one top-level "repeats" (--repeats) and the header printed "median of N" whatever each
part ran."""

from __future__ import annotations

import argparse
import json

from warmserve.bench import switch


def _args(**kw) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    switch.add_arguments(p)
    a = p.parse_args([])
    a.__dict__.update(**kw)
    return a


def _counting_timed(monkeypatch) -> list[int]:
    """switch.timed, unchanged, noting each call's repeats (the parts look it up by name when they time)."""
    calls: list[int] = []
    real = switch.timed

    def timed(fn, repeats, dev, setup=None, teardown=None):
        out = real(fn, repeats, dev, setup, teardown)
        calls.append(len(out))
        return out

    monkeypatch.setattr(switch, "timed", timed)
    return calls


def test_activation_and_cold_load_record_the_repeats_they_ran(tmp_path, monkeypatch, capsys):
    calls = _counting_timed(monkeypatch)
    out = tmp_path / "switch.json"
    assert switch.main(_args(parts="activation", sizes_gib="0.25", repeats=5, json=str(out), dir=str(tmp_path))) == 0
    row = json.loads(out.read_text())["activation_vs_cold_load"][0]
    assert calls == [15, 3], calls  # activation, then cold load
    assert row["repeats"] == {"activation": 15, "cold_load": 3}
    printed = capsys.readouterr().out
    assert "median of 5" not in printed and " 15/3" in printed


def test_move_and_load_parts_record_their_repeats(monkeypatch):
    calls = _counting_timed(monkeypatch)
    dev = switch.Device("host", 0)
    res = switch.move_and_primitives(_args(repeats=1), dev)
    assert res["move_vs_memcpy"]["repeats"] == {"move": 2, "memcpy": 1}  # both directions of each round
    assert res["per_gib_repeats"] == {"map": 1, "unmap": 1, "move": 2, "first_touch": 1, "touch_again": 1}
    assert sum(calls) == 1 + 2 + 1 + 1 + 1 + 1
