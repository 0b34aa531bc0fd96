"""Found in review: a chat prompt is tokenised without the tokenizer's special tokens, as its template writes any
BOS itself; but a checkpoint with no chat template gets the plain 'role: text' fallback, which writes none, so a
tokenizer whose post-processor adds BOS (a Llama base model) gave completions [BOS, ...] and chats [...]. The
fallback's prompt must get them as the same text sent as a completion does."""

from __future__ import annotations

import json
import os
import shutil

from warmserve.controller.frontend import plain_chat_prompt, prepare
from warmserve.engine.tokenizer import Tokenizer


def _bos_checkpoint(tmp_path, demo_dir) -> tuple[str, int]:
    """qwen2-30m's tokenizer with no chat template and a post-processor that puts <|endoftext|> first."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import processors

    src = demo_dir["qwen2-30m"]
    shutil.copy(os.path.join(src, "tokenizer.json"), tmp_path / "tokenizer.json")
    with open(os.path.join(src, "tokenizer_config.json")) as f:
        cfg = json.load(f)
    cfg.pop("chat_template", None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    hf = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    bos = hf.token_to_id("<|endoftext|>")
    hf.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A", pair="<|endoftext|> $A $B",
                                                      special_tokens=[("<|endoftext|>", bos)])
    hf.save(str(tmp_path / "tokenizer.json"))
    return str(tmp_path), bos


MSGS = [{"role": "user", "content": "naïve café"}]


def test_the_no_template_chat_fallback_gets_the_bos_a_completion_gets(tmp_path, demo_dir):
    path, bos = _bos_checkpoint(tmp_path, demo_dir)
    tok = Tokenizer(path)
    assert not tok.chat_template

    class Model:
        tokenizer, max_context, max_token_chars = tok, 2048, tok.max_token_chars

    text = tok.apply_chat_template(MSGS)
    chat = prepare(Model(), messages=MSGS, max_tokens=4)
    assert chat == prepare(Model(), text, max_tokens=4)
    assert chat[0] == bos and chat[1] != bos and chat[1:] == tok.encode(text)


def test_a_tokenizer_without_a_template_renderer_gets_the_bos_too(tmp_path, demo_dir):
    """plain_chat_prompt, the fallback for a tokenizer that has no apply_chat_template at all."""
    path, bos = _bos_checkpoint(tmp_path, demo_dir)
    real = Tokenizer(path)

    class Bare:
        vocab_size = real.vocab_size

        def encode(self, text, add_special_tokens=False):
            return real.encode(text, add_special_tokens=add_special_tokens)

    class Model:
        tokenizer, max_context, max_token_chars = Bare(), 2048, real.max_token_chars

    chat = prepare(Model(), messages=MSGS, max_tokens=4)
    assert chat == [bos] + real.encode(plain_chat_prompt(MSGS))
