"""Chat templates rendered as Hugging Face renders them: each template here is rendered by this tokenizer and by
transformers' AutoTokenizer from the same checkpoint directory, and the prompts must be the same text. Found in
review: templates that test variables nobody passes (Qwen2.5's and Qwen3's `tools`) failed every chat with a 500,
a list of named templates failed too, and chat_template.jinja was ignored."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from warmserve.controller.frontend import prepare
from warmserve.engine.tokenizer import Tokenizer
from warmserve.errors import InvalidArgumentError

transformers = pytest.importorskip("transformers")

# The shape of Qwen2.5's template: tools and tool calls tested but not passed, tojson, a loop control.
TOOLS_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n{{ tools | tojson }}<|im_end|>\n{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.tool_calls %}{% continue %}{% endif %}"
    "<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)
# The shape of Gemma's: no system role.
NO_SYSTEM_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "<start_of_turn>{{ message['role'] }}\n{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
MSGS = [{"role": "user", "content": "naïve café ✓"}, {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "again"}]


def _checkpoint(tmp_path, demo_dir, template=None, jinja_file=None) -> str:
    src = demo_dir["qwen2-30m"]
    for name in ("tokenizer.json", "config.json", "generation_config.json"):
        if os.path.isfile(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), tmp_path / name)
    with open(os.path.join(src, "tokenizer_config.json")) as f:
        cfg = json.load(f)
    cfg.pop("chat_template", None)
    if template is not None:
        cfg["chat_template"] = template
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    if jinja_file is not None:
        (tmp_path / "chat_template.jinja").write_text(jinja_file)
    return str(tmp_path)


def _theirs(path: str, msgs) -> str:
    return transformers.AutoTokenizer.from_pretrained(path).apply_chat_template(msgs, tokenize=False,
                                                                                add_generation_prompt=True)


@pytest.mark.parametrize("where", ["string", "named list", "jinja file"])
def test_templates_render_as_transformers_renders_them(tmp_path, demo_dir, where):
    if where == "string":
        path = _checkpoint(tmp_path, demo_dir, TOOLS_TEMPLATE)
    elif where == "named list":
        path = _checkpoint(tmp_path, demo_dir, [{"name": "default", "template": TOOLS_TEMPLATE},
                                                {"name": "tool_use", "template": "{{ raise_exception('no') }}"}])
    else:
        path = _checkpoint(tmp_path, demo_dir, jinja_file=TOOLS_TEMPLATE)
    ours = Tokenizer(path).apply_chat_template(MSGS)
    assert ours == _theirs(path, MSGS)
    assert ours.startswith("<|im_start|>user\nnaïve café ✓<|im_end|>") and ours.endswith("<|im_start|>assistant")


def test_a_template_that_refuses_the_messages_is_the_clients_error(tmp_path, demo_dir):
    path = _checkpoint(tmp_path, demo_dir, NO_SYSTEM_TEMPLATE)
    tok = Tokenizer(path)
    assert tok.apply_chat_template(MSGS) == _theirs(path, MSGS)
    msgs = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]
    with pytest.raises(InvalidArgumentError, match="System role not supported") as e:
        tok.apply_chat_template(msgs)
    assert e.value.param == "messages"

    class Model:  # what the front end reads of a model
        tokenizer, max_context, max_token_chars = tok, 2048, tok.max_token_chars

    # Not sent on as a plain "role: text" prompt, which the model would answer with nonsense: a 400.
    with pytest.raises(InvalidArgumentError, match="System role not supported"):
        prepare(Model(), messages=msgs, max_tokens=4)


def test_a_template_that_does_not_parse_names_the_file_to_fix(tmp_path, demo_dir):
    path = _checkpoint(tmp_path, demo_dir, "{% for m in messages %}{{ m.content }")
    with pytest.raises(InvalidArgumentError, match="does not parse.*fix chat_template"):
        Tokenizer(path).apply_chat_template(MSGS)


def test_a_completion_prompt_gets_the_tokenizers_bos_and_a_chat_does_not_get_it_twice(tmp_path, demo_dir):
    """Found in review: completion prompts were tokenised without the tokenizer's special tokens, so a Llama
    checkpoint (whose tokenizer.json adds BOS in its post-processor) was fed prompts with no BOS. The ids must be
    those transformers gives: ``tok(prompt)`` for a completion, ``apply_chat_template(tokenize=True)`` for a
    chat whose template writes the BOS itself."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import processors

    path = _checkpoint(tmp_path, demo_dir, "{{ bos_token }}" + TOOLS_TEMPLATE)
    hf = HFTokenizer.from_file(os.path.join(path, "tokenizer.json"))
    bos = hf.token_to_id("<|endoftext|>")
    hf.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A", pair="<|endoftext|> $A $B",
                                                      special_tokens=[("<|endoftext|>", bos)])
    hf.save(os.path.join(path, "tokenizer.json"))
    tok = Tokenizer(path)

    class Model:
        tokenizer, max_context, max_token_chars = tok, 2048, tok.max_token_chars

    theirs = transformers.AutoTokenizer.from_pretrained(path)
    ids = prepare(Model(), "naïve café", max_tokens=4)
    assert ids[0] == bos and ids == theirs("naïve café").input_ids
    chat = prepare(Model(), messages=MSGS, max_tokens=4)
    ref = theirs.apply_chat_template(MSGS, tokenize=True, add_generation_prompt=True)
    ref = ref["input_ids"] if isinstance(ref, dict) or hasattr(ref, "keys") else ref
    assert chat == list(ref) and chat[0] == bos and chat[1] != bos


# Found in review (each rendered differently from transformers, or not at all): a template marking assistant turns
# with {% generation %} did not parse; tools and documents were undefined where transformers passes None (an
# undefined one passes "is not none"); special tokens other than bos and eos were not in scope; and a
# chat_template.jinja lost to tokenizer_config.json's template, where transformers gives the file priority.
GENERATION_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}<|im_start|>assistant\n{% generation %}"
    "{{ m['content'] }}{% endgeneration %}<|im_end|>\n{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
NONE_GUARDED_TEMPLATE = (
    "{% if tools is not none %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>{% endif %}"
    "{% if documents is not none %}<docs/>{% endif %}{{ pad_token }}{{ unk_token }}|"
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")


@pytest.mark.parametrize("template, jinja_file, starts", [
    (GENERATION_TEMPLATE, None, "<|im_start|>user\nnaïve"),
    (NONE_GUARDED_TEMPLATE, None, "<pad><unk>|user: naïve"),
    ("OLD{% for m in messages %}{{ m['content'] }}{% endfor %}", "NEW{% for m in messages %}<{{ m['role'] }}>"
     "{{ m['content'] }}{% endfor %}", "NEW<user>naïve"),
], ids=["generation-block", "tools-none-and-special-tokens", "jinja-file-first"])
def test_templates_render_as_transformers_renders_them_found_in_review(tmp_path, demo_dir, template, jinja_file,
                                                                       starts):
    path = _checkpoint(tmp_path, demo_dir, template, jinja_file=jinja_file)
    with open(os.path.join(path, "tokenizer_config.json")) as f:
        cfg = json.load(f)
    cfg.update(pad_token="<pad>", unk_token={"__type": "AddedToken", "content": "<unk>", "special": True})
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    ours = Tokenizer(path).apply_chat_template(MSGS)
    assert ours == _theirs(path, MSGS)
    assert ours.startswith(starts), ours
