"""Found in review (names and paths beyond ASCII): a model name or checkpoint path that the server could not carry
was accepted at start. ``name = "a\\nb"`` split the controller's log lines in two; a name with a byte that is not
UTF-8 (``--model /ckpt/m=$'n\\xff'``) made /v1/models, /stats and /metrics answer an error each time; a checkpoint
folder with such a byte in its path gave a server that said ready and answered every request with a 500 after
three failed starts ("surrogates not allowed": workers are sent the path as UTF-8). Names that are only unusual
(spaces, quotes, backslashes, "org/model", emoji, right-to-left text, joiners, combining marks) are served."""

from __future__ import annotations

import json
import os
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from warmserve.config import ModelSpec
from warmserve.controller.metrics import ControllerMetrics
from warmserve.controller.models import controller_model
from warmserve.errors import InvalidArgumentError

from controller_harness import demo_path


def _linked_copy(folder) -> str:
    """The demo checkpoint's files linked into ``folder`` (a str or bytes path)."""
    os.makedirs(folder)
    src = demo_path()
    for f in os.listdir(src):
        if not f.startswith("."):
            os.symlink(os.path.join(src, f), os.path.join(folder, os.fsencode(f) if isinstance(folder, bytes) else f))
    return os.fsdecode(folder)


@pytest.mark.parametrize("name, char", [("a\nb", "U+000A"), ("x\r\n2026-12-07 fake ERROR line", "U+000D"),
                                        ("tab\there", "U+0009"), ("nul\0", "U+0000"), ("esc\x1b[31m", "U+001B"),
                                        ("c1\x85", "U+0085"), ("ls\u2028", "U+2028"), ("ps\u2029", "U+2029")],
                         ids=["lf", "crlf", "tab", "nul", "esc", "nel", "line-sep", "para-sep"])
def test_a_name_with_a_control_or_line_breaking_character_is_refused(name, char):
    with pytest.raises(InvalidArgumentError, match=f"holds a .*{re.escape(char)}.*give a name without one") as e:
        controller_model(ModelSpec(path=demo_path(), name=name))
    assert "\n" not in e.value.message and e.value.character == char


@pytest.mark.parametrize("name", ["n\udcffx", "lone\ud800"], ids=["argv-byte", "lone-surrogate"])
def test_a_name_that_is_not_utf8_is_refused_naming_its_bytes(name):
    with pytest.raises(InvalidArgumentError, match=r"is not UTF-8 text \(its bytes: b'") as e:
        controller_model(ModelSpec(path=demo_path(), name=name))
    json.dumps(e.value.fields, ensure_ascii=False).encode("utf-8")  # the fields travel as any error's do


def test_a_checkpoint_path_with_a_byte_that_is_not_utf8_is_refused_at_start(tmp_path):
    folder = _linked_copy(os.path.join(os.fsencode(tmp_path), b"ck\xff", b"llama-20m"))
    with pytest.raises(InvalidArgumentError, match=r"the checkpoint path b'.*ck\\xff/llama-20m' holds bytes that "
                                                   r"are not UTF-8.*rename the folder") as e:
        controller_model(ModelSpec(path=folder, name="llama-20m"))
    assert e.value.path.endswith("ck\\xff/llama-20m")
    # the default name is the folder's: a folder named so is refused for its path first, which renaming fixes
    with pytest.raises(InvalidArgumentError, match="checkpoint path"):
        controller_model(ModelSpec(path=_linked_copy(os.path.join(os.fsencode(tmp_path), b"m\xfe"))))


UNUSUAL = ['org/Llämä "q" \\ ✨', "👩‍👩‍👧 family", "مرحبا-model", "café", "cafe\u0301", "name.with.dots", "L" * 2000]


def test_unusual_names_under_a_non_ascii_path_are_served_and_their_metrics_parse(tmp_path):
    folder = _linked_copy(str(tmp_path / "ckpt é 模型" / "llama 20m ✨"))
    models = [controller_model(ModelSpec(path=folder, name=n)) for n in UNUSUAL]
    assert [m.name for m in models] == UNUSUAL
    metrics = ControllerMetrics()
    for n in UNUSUAL:
        metrics.model_series(n)
        metrics.tokens.inc(3, model=n)
    seen = {s.labels["model"]: s.value for f in text_string_to_metric_families(metrics.registry.render())
            if f.name == "warmserve_generation_tokens" for s in f.samples if s.name.endswith("_total")}
    assert seen == {n: 3.0 for n in UNUSUAL}
