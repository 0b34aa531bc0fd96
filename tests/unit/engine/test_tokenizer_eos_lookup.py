"""The EOS ids without parsing tokenizer.json: a worker builds a Tokenizer on each model load, beside its running
engines, and `tokenizers`' from_file held the GIL for the whole parse (0.34-0.41 s for a Qwen2-sized file, every
engine step and message of the worker waiting), while the engine needs only the EOS ids. They must be the very ids
the parsed tokenizer gives, and the controller, which encodes and decodes, still parses the file."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import tokenizers

import warmserve.engine.tokenizer as T
from warmserve.engine import Engine, SamplingParams, load_model
from warmserve.engine.tokenizer import Tokenizer
from warmserve.errors import InvalidArgumentError


def _write(path, name: str, obj) -> None:
    with open(os.path.join(path, name), "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)


def _added(i: int, content: str) -> dict:
    return dict(id=i, content=content, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)


def byte_level_alphabet() -> list[str]:
    kept = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    return [chr(b) for b in kept] + [chr(256 + i) for i in range(256 - len(kept))]


def qwen2_style(path, n_merges: int, specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                ensure_ascii: bool = False) -> int:
    """A byte-level BPE tokenizer.json laid out as Qwen2's (150k merges at full size, about 5 MB): the byte
    alphabet, merges of two bytes then of a pair and a byte, the special tokens added after the vocabulary.
    Returns the vocabulary's size (the first special token's id)."""
    alpha = byte_level_alphabet()
    vocab = {c: i for i, c in enumerate(alpha)}
    merges = []
    for a in alpha:
        for b in alpha:
            if len(merges) == min(n_merges, 256 * 256):
                break
            vocab[a + b] = len(vocab)
            merges.append([a, b])
    i = 0
    while len(merges) < n_merges:
        ab, c = alpha[(i // 256) % 256] + alpha[(i // 7) % 256], alpha[i % 256]
        if ab + c not in vocab:
            vocab[ab + c] = len(vocab)
            merges.append([ab, c])
        i += 1
    n = len(vocab)
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    doc = {"version": "1.0", "truncation": None, "padding": None,
           "added_tokens": [_added(n + j, s) for j, s in enumerate(specials)],
           "normalizer": {"type": "NFC"}, "pre_tokenizer": {**byte_level, "use_regex": True},
           "post_processor": byte_level, "decoder": byte_level,
           "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                     "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                     "vocab": vocab, "merges": merges}}
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=ensure_ascii)
    return n


def llama2_style(path) -> None:
    """A SentencePiece-converted BPE as Llama-2's tokenizer.json: <unk> <s> </s> both in the vocabulary and added,
    byte fallback, "▁" for spaces; the configs as Llama-2's (eos_token an AddedToken dict)."""
    from tokenizers import AddedToken, decoders, models, normalizers, processors

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece in ["▁", *letters]:
        vocab[piece] = len(vocab)
    merges = []
    for a in ["▁", *letters]:
        for b in letters:
            vocab[a + b] = len(vocab)
            merges.append((a, b))
    tok = tokenizers.Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ("<unk>", "<s>", "</s>")])
    os.makedirs(path, exist_ok=True)
    tok.save(os.path.join(path, "tokenizer.json"))
    _write(path, "config.json", {"bos_token_id": 1, "eos_token_id": 2})
    _write(path, "generation_config.json", {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0})
    added = {"__type": "AddedToken", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    _write(path, "tokenizer_config.json", {"bos_token": {**added, "content": "<s>"},
                                           "eos_token": {**added, "content": "</s>"}, "unk_token": "<unk>"})


def parsed_eos_ids(path) -> tuple[int, ...]:
    """The EOS ids as the Tokenizer made them from the parsed file: the configs', then eos_token's id there."""
    def read(name):
        p = os.path.join(path, name)
        return json.load(open(p, encoding="utf-8")) if os.path.isfile(p) else {}

    gen, cfg, tcfg = read("generation_config.json"), read("config.json"), read("tokenizer_config.json")
    eos = gen.get("eos_token_id", cfg.get("eos_token_id"))
    ids = [int(i) for i in (eos if isinstance(eos, list) else [eos] if eos is not None else [])]
    tok = tcfg.get("eos_token")
    tok = tok.get("content") if isinstance(tok, dict) else tok
    own = tokenizers.Tokenizer.from_file(os.path.join(path, "tokenizer.json")).token_to_id(tok) if tok else None
    if own is not None and own not in ids:
        ids.append(own)
    return tuple(ids)


def test_llama2_style_eos_ids_are_the_parsed_tokenizers(tmp_path):
    llama2_style(tmp_path)
    assert Tokenizer(str(tmp_path)).eos_token_ids == parsed_eos_ids(tmp_path) == (2,)


@pytest.mark.parametrize("variant", ["instruct", "base", "chat-fine-tune"])
def test_qwen2_style_eos_ids_are_the_parsed_tokenizers(tmp_path, variant):
    n = qwen2_style(tmp_path, 3000)
    endoftext, im_end = n, n + 2
    if variant == "instruct":  # Qwen2-7B-Instruct's configs
        _write(tmp_path, "config.json", {"eos_token_id": im_end})
        _write(tmp_path, "generation_config.json", {"eos_token_id": [im_end, endoftext]})
        _write(tmp_path, "tokenizer_config.json", {"eos_token": "<|im_end|>"})
    elif variant == "base":
        _write(tmp_path, "config.json", {"eos_token_id": endoftext})
        _write(tmp_path, "tokenizer_config.json", {"eos_token": "<|endoftext|>"})
    else:  # the turn end named only by the tokenizer: appended
        _write(tmp_path, "config.json", {"eos_token_id": endoftext})
        _write(tmp_path, "tokenizer_config.json", {"eos_token": "<|im_end|>"})
    got = Tokenizer(str(tmp_path)).eos_token_ids
    assert got == parsed_eos_ids(tmp_path)
    want = {"instruct": (im_end, endoftext), "base": (endoftext,), "chat-fine-tune": (endoftext, im_end)}
    assert got == want[variant]


def test_demo_checkpoints_eos_ids_are_the_parsed_tokenizers(demo_dir, tiny_dir):
    for path in [*demo_dir.values(), *tiny_dir.values()]:
        assert Tokenizer(path).eos_token_ids == parsed_eos_ids(path), path


@pytest.mark.parametrize("token", ["</s>", '<|fin"\\é\n|>', "<nope>"])
@pytest.mark.parametrize("where", ["added", "vocab", "unigram", "ascii-escaped"])
def test_token_ids_are_the_parsed_tokenizers_wherever_the_file_keeps_them(tmp_path, monkeypatch, token, where):
    """Added or only in the vocabulary, a Unigram's list, a file written with \\u escapes, a token not there; and
    with the file read in pieces cut anywhere (the first read ends mid-number, mid-string, mid-escape)."""
    from tokenizers import models

    if where == "unigram":
        pieces = [("<pad>", 0.0), ("<unk>", 0.0), ("a", -1.0), ("b", -2.0), ("</s>", 0.0), ('<|fin"\\é\n|>', 0.0)]
        tok = tokenizers.Tokenizer(models.Unigram(pieces, unk_id=1, byte_fallback=False))
        tok.save(str(tmp_path / "tokenizer.json"))
    else:
        specials = ("<s>", "</s>", '<|fin"\\é\n|>') if where in ("added", "ascii-escaped") else ()
        qwen2_style(tmp_path, 300, specials=specials, ensure_ascii=where == "ascii-escaped")
        if where == "vocab":  # in the vocabulary only, as old GPT-2 files keep <|endoftext|>
            doc = json.load(open(tmp_path / "tokenizer.json", encoding="utf-8"))
            for extra in ("</s>", '<|fin"\\é\n|>'):
                doc["model"]["vocab"][extra] = len(doc["model"]["vocab"])
            _write(tmp_path, "tokenizer.json", doc)
    file = str(tmp_path / "tokenizer.json")
    want = tokenizers.Tokenizer.from_file(file).token_to_id(token)
    assert (want is None) == (token == "<nope>")
    assert T._token_id(file, token) == want
    size = os.path.getsize(file)
    cuts = sorted({*range(1, 4000, 7), *range(size - 200, size + 2)})
    for head in cuts:
        monkeypatch.setattr(T, "_HEAD_BYTES", head)
        assert T._token_id(file, token) == want, head


def test_a_broken_tokenizer_json_is_a_typed_error(tmp_path):
    qwen2_style(tmp_path, 300)
    _write(tmp_path, "tokenizer_config.json", {"eos_token": "<|im_end|>"})
    text = open(tmp_path / "tokenizer.json", encoding="utf-8").read()
    for broken in (text[:200], text.replace('"added_tokens": [', '"added_tokens": [,', 1)):
        (tmp_path / "tokenizer.json").write_text(broken, encoding="utf-8")
        with pytest.raises(InvalidArgumentError, match="tokenizer.json"):
            Tokenizer(str(tmp_path))


class _CountingTokenizer:
    """`tokenizers.Tokenizer` with its parses counted (each still parses)."""

    calls: list[str] = []

    @staticmethod
    def from_file(path: str):
        _CountingTokenizer.calls.append(path)
        return _REAL.from_file(path)

    @staticmethod
    def from_str(text: str):
        _CountingTokenizer.calls.append("<str>")
        return _REAL.from_str(text)


_REAL = tokenizers.Tokenizer


def test_a_model_load_does_not_parse_tokenizer_json_and_the_controller_does(tiny_dir, pool, tmp_path, monkeypatch):
    path = str(tmp_path / "m")
    shutil.copytree(tiny_dir["tiny-linear"], path)
    with open(os.path.join(path, "tokenizer.json"), "a") as f:  # bytes of its own: no other test's parse to share
        f.write("\n" * 3)
    want = parsed_eos_ids(path)
    _CountingTokenizer.calls.clear()
    monkeypatch.setattr(tokenizers, "Tokenizer", _CountingTokenizer)
    with Engine(load_model(path, pool).wait()) as e:
        assert e.tokenizer.eos_token_ids == want and set(want) <= e.eos
        e.generate([[5, 17, 300]], SamplingParams(max_tokens=2))
    assert _CountingTokenizer.calls == []

    from warmserve.controller.models import load_tokenizer

    tok = load_tokenizer(path)
    assert tok.max_token_chars > 0 and tok.decode(tok.encode("hello world")) == "hello world"
    assert tok.eos_token_ids == want and len(_CountingTokenizer.calls) == 1
