"""Found in review (text in and out): the API takes OpenAI's "developer" role as the newer name of "system", but
handed it to the chat template as "developer". A template that never names that role rendered a turn the model
was never trained on (Qwen's shape: "<|im_start|>developer"), or refused the chat (strict templates raise
"Unexpected message role"). It is the system turn unless the template names "developer" itself."""

from __future__ import annotations

import json
import os
import shutil

from warmserve.engine.tokenizer import Tokenizer

# Qwen2.5's shape: any role written as it comes.
ANY_ROLE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Strict templates (Qwen3.5's, Mistral's): an unknown role is refused.
STRICT = ("{% for m in messages %}{% if m.role not in ['system', 'user', 'assistant'] %}"
          "{{ raise_exception('Unexpected message role.') }}{% endif %}[{{ m.role }}]{{ m.content }}{% endfor %}")
# A template that knows the role keeps it.
KNOWS_DEVELOPER = ("{% for m in messages %}{% if m.role == 'developer' %}<dev>{% else %}[{{ m.role }}]{% endif %}"
                   "{{ m.content }}{% endfor %}")
MSGS = [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}]


def _tokenizer(tmp_path, demo_dir, template: str) -> Tokenizer:
    src = demo_dir["qwen2-30m"]
    shutil.copy(os.path.join(src, "tokenizer.json"), tmp_path / "tokenizer.json")
    with open(os.path.join(src, "tokenizer_config.json")) as f:
        cfg = json.load(f)
    cfg["chat_template"] = template
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    return Tokenizer(str(tmp_path))


def test_a_developer_message_is_the_system_turn_of_a_template_without_that_role(tmp_path, demo_dir):
    out = _tokenizer(tmp_path, demo_dir, ANY_ROLE).apply_chat_template(MSGS)
    assert out.startswith("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi"), out
    assert MSGS[0]["role"] == "developer"  # the caller's messages are left as they were


def test_a_strict_template_takes_a_developer_message(tmp_path, demo_dir):
    assert _tokenizer(tmp_path, demo_dir, STRICT).apply_chat_template(MSGS) == "[system]be brief[user]hi"


def test_a_template_that_names_developer_gets_it_as_sent(tmp_path, demo_dir):
    assert _tokenizer(tmp_path, demo_dir, KNOWS_DEVELOPER).apply_chat_template(MSGS) == "<dev>be brief[user]hi"
