"""`warmserve simulate --json` into a pipe (bash's ``>(jq .)``, /dev/stdout): found in review, the results were
rewritten after each policy and each --sweep-rate scale, so a pipe got one JSON document per rewrite. A pipe or
device now gets exactly one, at the end; a file is still rewritten after each (what an interrupt keeps)."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from warmserve import cli

SMALL = ["simulate", "--workload", "paper-conv", "--models", "2", "--duration-s", "30", "--rate", "1",
         "--history-days", "0", "--quiet"]


def _documents(text: str) -> list[dict]:
    docs, dec, i = [], json.JSONDecoder(), 0
    while text[i:].strip():
        i += len(text[i:]) - len(text[i:].lstrip())
        doc, i = dec.raw_decode(text, i)
        docs.append(doc)
    return docs


def _run_into_fifo(tmp_path, argv) -> tuple[int, list[dict]]:
    """``warmserve ARGV --json FIFO`` with a reader that reopens the FIFO after each writer closes it."""
    fifo = str(tmp_path / "results.fifo")
    os.mkfifo(fifo)
    chunks, stop = [], threading.Event()

    def read():
        while not stop.is_set():
            with open(fifo) as f:
                chunks.append(f.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        rc = cli.main([*argv, "--json", fifo])
    finally:
        stop.set()
        # A writer that opens and closes lets a reader waiting in open() return, and see the stop. Not a blocking
        # open: a reader that saw the stop first has gone, and the open waited for ever (a CI run hung here).
        deadline = time.monotonic() + 10
        while reader.is_alive() and time.monotonic() < deadline:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # ENXIO: no reader has it open at this moment
                pass
            reader.join(0.05)
    return rc, _documents("".join(chunks))


@pytest.mark.parametrize("mode", [["--policy", "warmserve,shared", "--no-search"],
                                  ["--policy", "warmserve", "--sweep-rate", "0.5,1", "--cold-start-band", "off"]],
                         ids=["policies", "sweep"])
def test_a_pipe_gets_exactly_one_json_document(tmp_path, capsys, mode):
    rc, docs = _run_into_fifo(tmp_path, [*SMALL, *mode])
    assert rc == 0, capsys.readouterr().err
    assert len(docs) == 1, [sorted(d) for d in docs]  # before: 3 (one per policy or scale, then the final one)
    doc = docs[0]
    if "--sweep-rate" in mode:
        assert doc["sweep"]["rate_scales"] == [0.5, 1.0] and "missing_rate_scales" not in doc
    else:
        assert list(doc["policies"]) == ["warmserve", "shared"] and "missing_policies" not in doc
