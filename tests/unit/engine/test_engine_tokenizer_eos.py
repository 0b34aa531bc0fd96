"""The tokenizer's own eos_token ends a generation beside the configs' EOS ids, as vLLM stops on both. Found in
review: a chat fine-tune whose tokenizer_config.json names its turn end as eos_token, while config.json and
generation_config.json still say the base model's EOS, ran past its turn to max_tokens."""

from __future__ import annotations

import json
import os
import shutil

from warmserve.engine import Engine, SamplingParams, load_model
from warmserve.engine.tokenizer import Tokenizer


def _rewrite(path: str, name: str, **fields) -> None:
    file = os.path.join(path, name)
    with open(file) as f:
        d = json.load(f)
    d.update(fields)
    with open(file, "w") as f:
        json.dump(d, f)


def test_the_tokenizers_eos_token_ends_a_generation_besides_the_configs(tiny_dir, pool, tmp_path):
    src = tiny_dir["tiny-linear"]
    prompt = [5, 17, 300]
    with Engine(load_model(src, pool).wait()) as e:
        first = e.generate([prompt], SamplingParams(max_tokens=4, ignore_eos=True))[0][0]
        assert first not in e.eos  # the configs' EOS would not end it

    # The same weights, with the greedy first token named as the tokenizer's eos_token and the configs' EOS 0 only.
    path = str(tmp_path / "chat-ft")
    shutil.copytree(src, path)
    tok_name = Tokenizer(src)._tok.id_to_token(first)
    _rewrite(path, "tokenizer_config.json", eos_token=tok_name)
    _rewrite(path, "generation_config.json", eos_token_id=0)
    _rewrite(path, "config.json", eos_token_id=0)
    tok = Tokenizer(path)
    assert tok.eos_token == tok_name and set(tok.eos_token_ids) == {0, first}

    with Engine(load_model(path, pool).wait()) as e:
        assert e.eos == {0, first}
        e.add_request("r", prompt, SamplingParams(max_tokens=4))
        outs = []
        while e.has_unfinished():
            outs += e.step()
        last = outs[-1]
        assert last.finished and last.finish_reason == "stop" and last.stop_reason == first
        assert [t for o in outs for t in o.token_ids] == [first]
