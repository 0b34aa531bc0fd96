"""The README's Python examples run as written: the OpenAI client's against `warmserve serve`
(test_openai_params.py, beside its server), and the `warmserve.Cluster` one here, with the demo checkpoints in place
of its /ckpt paths. Found in review: nothing ran them, so a renamed argument or field would have shown first to a
reader who copied them."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import serving

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def readme_python(containing: str) -> str:
    """The README's ```python block that contains ``containing``."""
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)
    found = [b for b in blocks if containing in b]
    assert len(found) == 1, f"{len(found)} README python blocks contain {containing!r}"
    return found[0]


def test_the_readme_cluster_example_runs_as_written(tmp_path):
    code = readme_python("warmserve.Cluster(")
    paths = serving.demo_paths(("llama-20m", "qwen2-30m"))
    code = code.replace("/ckpt/llama-20m", paths["llama-20m"]).replace("/ckpt/qwen2-30m", paths["qwen2-30m"])
    assert "/ckpt/" not in code  # every checkpoint it names is a demo's
    script = tmp_path / "example.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180,
                         env=os.environ)
    assert out.returncode == 0, out.stderr[-3000:]
    # generate's text (random weights: any characters, newlines too), its finish_reason and completion_tokens
    assert re.search(r" (length|stop) (1[0-6]|[1-9])\n", out.stdout), out.stdout
    assert 1 <= out.stdout.count("TokenLogprobs(logprob=") <= 8, out.stdout  # the 8-token generation's logprobs
    assert "'model': 'llama-20m'" in out.stdout and "'model': 'qwen'" in out.stdout, out.stdout  # its instances
