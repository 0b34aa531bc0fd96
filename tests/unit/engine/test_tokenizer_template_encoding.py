"""A chat_template.jinja that is not UTF-8 is the checkpoint's error, naming the file. Found in review: `warmserve
serve --model DIR` stopped on a bare UnicodeDecodeError that named no file (exit 2 by luck of ValueError)."""

from __future__ import annotations

import os
import shutil

import pytest

from warmserve.engine.safetensors_header import CheckpointError
from warmserve.engine.tokenizer import Tokenizer


def _copy_tokenizer(tmp_path, demo_dir) -> str:
    src = demo_dir["qwen2-30m"]
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(src, name), tmp_path / name)
    return str(tmp_path)


def test_a_latin1_chat_template_file_is_refused_naming_it(tmp_path, demo_dir):
    d = _copy_tokenizer(tmp_path, demo_dir)
    (tmp_path / "chat_template.jinja").write_bytes("{{ 'caf\u00e9' }}{% for m in messages %}{{ m.content }}{% endfor %}"
                                                   .encode("latin-1"))
    with pytest.raises(CheckpointError, match=r"chat_template\.jinja is not UTF-8 text .*fix or re-download it"):
        Tokenizer(d)


def test_a_utf8_chat_template_file_is_used(tmp_path, demo_dir):
    d = _copy_tokenizer(tmp_path, demo_dir)
    text = "{{ 'caf\u00e9' }}{% for m in messages %}{{ m.content }}{% endfor %}"
    (tmp_path / "chat_template.jinja").write_text(text, encoding="utf-8")
    assert Tokenizer(d).chat_template == text
