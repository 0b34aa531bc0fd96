"""Found in review (text in and out): a chat message's ``name`` (OpenAI's field for telling speakers of one role
apart) was dropped before the chat template, so a template that names speakers rendered two users as one. It
reaches the template now, through the HTTP API's parsing and the Python API's alike; a message without one has no
name key (a template testing ``m.name is defined`` sees none)."""

from __future__ import annotations

import json

from warmserve.controller import openai_api as oa

from test_text_review_developer_role import _tokenizer

NAMES = ("{% for m in messages %}[{{ m.role }}{% if m.name is defined %}:{{ m.name }}{% endif %}]{{ m.content }}"
         "{% endfor %}")
MSGS = [{"role": "user", "content": "hi", "name": "ann"}, {"role": "user", "content": "hello", "name": "bob"},
        {"role": "user", "content": "and me"}]


def test_each_speakers_name_reaches_the_template(tmp_path, demo_dir):
    tok = _tokenizer(tmp_path, demo_dir, NAMES)
    req, _ = oa.parse_chat(json.dumps({"model": "m", "messages": MSGS}).encode())
    want = "[user:ann]hi[user:bob]hello[user]and me"
    assert tok.apply_chat_template(oa.chat_dicts(req), add_generation_prompt=False) == want
    assert tok.apply_chat_template(oa.messages_from(MSGS), add_generation_prompt=False) == want
