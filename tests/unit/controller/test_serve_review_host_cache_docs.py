"""Found in review: the host checkpoint cache (--host-cache-dir, a tmpfs: /dev/shm/warmserve-ckpt by default)
keeps its entries in host memory after the server exits, and nothing said so. That is its design (a store shared
by a machine's workers, like ServerlessLLM's, so that the next start loads at memory speed); `serve --help` and
the README now say that the entries persist, what bounds them, and how to free the memory."""

from __future__ import annotations

import pathlib
import re

import pytest

from warmserve import cli

README = pathlib.Path(__file__).resolve().parents[3] / "README.md"


def _flat(text: str) -> str:
    return re.sub(r"[\s#]+", " ", text)


def test_serve_help_says_the_cache_outlives_the_server_and_how_to_free_it(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["serve", "--help"])
    assert e.value.code == 0
    out = _flat(capsys.readouterr().out)
    entry = out[out.index("--host-cache-dir DIR that cache's directory"):]
    assert "persist after the server exits" in entry and "next start" in entry
    assert "up to the capacity (--host-cache-gib" in entry and "evicted" in entry
    assert "`rm -r DIR`" in entry
    assert "it outlives the server: --host-cache-dir" in out  # said at --host-cache-gib too


def test_the_readme_config_says_it_too():
    text = _flat(README.read_text())
    block = text[text.index("host_cache_bytes = 0"):text.index("[[models]]")]
    assert "persist in that tmpfs after the server exits" in block and "up to host_cache_bytes" in block
    assert "`rm -r DIR` frees it" in block
