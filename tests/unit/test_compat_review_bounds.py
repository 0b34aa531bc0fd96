"""The lower bounds pyproject.toml declares against what the code uses that came in a later release.

Found in the upgrade review (2026-12-07): with each dependency installed at its declared lowest version in a venv
(`pip install "aiohttp==3.9.0" "torch==2.4.1" ...`), `import warmserve.controller.api` failed on aiohttp 3.9-3.13
(AttributeError: module 'aiohttp.web' has no attribute 'RequestKey'), every engine step on torch 2.4.1 (TypeError:
scaled_dot_product_attention() got an unexpected keyword argument 'enable_gqa') and every tp > 1 group on 2.5-2.7,
every SamplingParams on msgspec 0.18.0-0.18.4 (AttributeError: module 'msgspec.structs' has no attribute
'force_setattr'; 0.18.5 refused max_tokens 16.0 with a 400), `serve --config X.toml` on Python 3.10
(ModuleNotFoundError: No module named 'tomllib'), and every model on tokenizers 0.19 whose tokenizer.json a later
tokenizers wrote (the demo checkpoints under ~/.cache/warmserve among them, and checkpoints saved since): "data did
not match any variant of untagged enum ModelWrapper", told as a file to fix or download again. Checked here by the
text the code uses, not by installing the old releases: a row whose text the code no longer holds fails too, so that
its bound is looked at again rather than kept for a use that went.
"""

from __future__ import annotations

import os
import re
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: (requirement name, or "python"; the first release with the feature; file under python/warmserve; the text of
#: its use there). Each first release was checked against the one before it: aiohttp 3.13.5 has no RequestKey,
#: torch 2.4.1 takes no enable_gqa (2.5.1 does), msgspec 0.18.4 has no force_setattr, Python 3.10 has no tomllib.
FEATURES = [
    ("aiohttp", (3, 14), "controller/api.py", "web.RequestKey("),
    ("torch", (2, 5), "engine/attention.py", "enable_gqa=True"),
    # a tp group's store on a socket handed over: torch 2.5-2.7's default libuv store raised "The libuv TCPStore
    # backend does not support initialization with an listen fd" (unit/engine/test_tp.py; the message is in
    # 2.7.0's libtorch_cpu.so, not in 2.8.0's)
    ("torch", (2, 8), "engine/parallel.py", "master_listen_fd=sock.fileno()"),
    ("msgspec", (0, 18, 5), "sampling.py", "msgspec.structs.force_setattr("),
    # strict=False reads a whole float as an int (max_tokens 16.0, as vLLM takes it) from 0.18.6 on; 0.18.5
    # answered "Expected `int | null`, got `float`" (unit/controller/test_http_api_review_clients.py)
    ("msgspec", (0, 18, 6), "controller/request_json.py", "type=cls, strict=False)"),
    # structs.replace runs __post_init__ from 0.21.0 on (0.18.6-0.20.0 skip it): EngineConfig.resolved's check of
    # max_num_seqs past 2**63-1 (unit/controller/test_config_review_inputs.py)
    ("msgspec", (0, 21), "protocol.py", "msgspec.structs.replace(self, max_num_seqs="),
    # an unclosed CURVE hub's authenticator thread hung the exit on pyzmq 25.0.0 and 25.1.2, not on 26.0.0
    # (unit/controller/test_review_security_hub_curve.py::test_a_curve_hub_dropped_without_close_neither_hangs...)
    ("pyzmq", (26, 0), "security.py", "from zmq.auth.thread import ThreadAuthenticator"),
    ("python", (3, 11), "config_file.py", "import tomllib"),
]


def _declared_floors() -> dict[str, tuple[int, ...]]:
    """name -> the version after ``>=`` in pyproject.toml's dependencies, and "python" -> requires-python's."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    out = {}
    for spec in [*project["dependencies"], "python" + project["requires-python"]]:
        m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(?:\[[^]]*\])?\s*>=\s*([0-9][0-9.]*)", spec)
        if m:
            parts = [int(x) for x in m.group(2).rstrip(".").split(".")]
            out[m.group(1).lower()] = tuple(parts + [0] * (3 - len(parts)))  # ">=26" is 26.0.0, not below 26.0
    return out


def test_each_declared_floor_has_every_feature_the_code_uses():
    floors = _declared_floors()
    short = []
    for name, first, rel, text in FEATURES:
        with open(os.path.join(ROOT, "python", "warmserve", rel), encoding="utf-8") as f:
            assert text in f.read(), f"{rel} no longer uses {text!r}: check the {name} floor again and drop this row"
        assert name in floors, f"pyproject.toml declares no '>=' floor for {name}"
        if floors[name] < first:
            short.append(f"{name}>={'.'.join(map(str, floors[name]))} but {rel} uses {text!r}, first in "
                         f"{'.'.join(map(str, first))}")
    assert not short, short


def test_the_tokenizers_floor_reads_the_tokenizer_files_written_here():
    """tokenizers 0.20 writes a BPE model's merges as pairs (["o", "n"]) where 0.19 wrote and reads "o n" only: a
    demo (or any checkpoint) saved with this install is unreadable below 0.20."""
    import json

    from warmserve.engine.demo import build_tokenizer

    merges = json.loads(build_tokenizer().to_str())["model"]["merges"]
    assert merges, "the demo tokenizer has no merges"
    if isinstance(merges[0], list):
        floor = _declared_floors()["tokenizers"]
        assert floor >= (0, 20), f"tokenizers>={'.'.join(map(str, floor))} cannot read this install's files"
