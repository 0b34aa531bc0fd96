"""Tokenizer: a checkpoint's tokenizer.json through the `tokenizers` library, with its chat template.

The chat template comes from chat_template.jinja beside tokenizer.json, else from tokenizer_config.json (a
string, or a list of named templates of which "default" is used), and is rendered as Hugging Face's
``apply_chat_template`` renders it: jinja2's immutable sandbox, blocks trimmed, loop controls, ``{% generation %}``
blocks, ``tools`` and ``documents`` None, the named special tokens, variables a template tests but nobody passed
(``message.tool_calls``) undefined and false, ``raise_exception``, ``strftime_now`` and a ``tojson`` that keeps
non-ASCII text. A template that refuses the messages (``raise_exception``, e.g. a system message a
model has no role for) is the client's error, not a reason to send another prompt. Without a template, messages
are joined as "role: content" lines ending with "assistant:".

tokenizer.json is parsed on first use, not on construction: ``tokenizers`` holds the GIL for the whole parse
(0.3-0.47 s for a Qwen2-sized, 150k-merge file), and a worker, which builds a Tokenizer on each model load beside
its running engines and only needs the EOS ids, stalled every step and message for that long. The EOS ids come
from the configs and a partial read of tokenizer.json (``_token_id``). The controller, which encodes and decodes,
parses it when it first asks for ``max_token_chars``, at startup.

Tokenizers whose tokenizer.json has the same bytes share one parse (``_shared_parse``): a cluster of many fine-tunes
of one base model would otherwise parse and hold one copy per model (found in review: a Qwen2-sized file took
0.3-1 s and 47 MB per copy, so 64 fine-tunes cost about a minute of start and 3 GB). Sharing is safe as the
controller only reads a parse: encode and decode borrow it immutably, and nothing here sets its truncation or
padding.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
import threading
import weakref

from warmserve.engine.arch import eos_token_ids, json_object
from warmserve.engine.safetensors_header import CheckpointError
from warmserve.errors import InvalidArgumentError


class _Parse:
    """One parse of a tokenizer.json, shared by the Tokenizers of files with its bytes; weakly held by the table."""

    __slots__ = ("tok", "max_chars", "__weakref__")

    def __init__(self, tok):
        self.tok = tok
        self.max_chars: int | None = None


#: Live parses by the SHA-256 of their file's bytes; an entry goes with the last Tokenizer that holds it.
_PARSES: weakref.WeakValueDictionary[str, _Parse] = weakref.WeakValueDictionary()
#: Taken around a parse, so that models loaded at once from copies of one file still parse it once.
_PARSES_LOCK = threading.Lock()


def _shared_parse(file: str) -> _Parse:
    """The parse of ``file``: the one a file of the same bytes already has, else a new one."""
    from tokenizers import Tokenizer as _HFTokenizer

    try:
        with open(file, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InvalidArgumentError(f"{file} cannot be read ({e.strerror}): fix or re-download it", path=file) from None
    key = hashlib.sha256(data).hexdigest()
    with _PARSES_LOCK:
        parsed = _PARSES.get(key)
        if parsed is None:
            try:  # from the bytes read and hashed, so the key is the parse's own even if the file is replaced
                parsed = _Parse(_HFTokenizer.from_str(data.decode("utf-8")))
            except Exception as e:  # tokenizers raises a bare Exception for a file it cannot read
                raise InvalidArgumentError(
                    f"{file} is not a tokenizer file `tokenizers` can read ({e}): fix or re-download it",
                    path=file) from None
            _PARSES[key] = parsed
    return parsed


class Tokenizer:
    def __init__(self, path: str):
        file = path if path.endswith(".json") else os.path.join(path, "tokenizer.json")
        if not os.path.isfile(file):
            # found in the review of real checkpoints: some repos hold only a SentencePiece tokenizer.model, which
            # transformers turns into the fast tokenizer's tokenizer.json when it saves it
            spm = os.path.isfile(os.path.join(os.path.dirname(file), "tokenizer.model"))
            raise InvalidArgumentError(
                f"no tokenizer.json at {path!r}: the checkpoint needs a `tokenizers` file" + (
                    "; it holds a SentencePiece tokenizer.model only: write tokenizer.json beside it once with "
                    "transformers, `python -c \"import sys, transformers; transformers.AutoTokenizer.from_pretrained("
                    "sys.argv[1]).save_pretrained(sys.argv[1])\" DIR` (with the sentencepiece package installed)"
                    if spm else ""), path=path)
        self.dir = os.path.dirname(file)
        self._file = file
        self._parsed = None
        self._parse_lock = threading.Lock()
        self.config = self._read_json("tokenizer_config.json")
        gen = self._read_json("generation_config.json")
        model_cfg = self._read_json("config.json")
        eos = gen.get("eos_token_id", model_cfg.get("eos_token_id"))
        eos_tok = _token_text(self.config.get("eos_token"))
        ids = list(eos_token_ids(eos, os.path.join(self.dir, "generation_config.json" if "eos_token_id" in gen
                                                   else "config.json")))
        # The tokenizer's own eos_token ends a generation too, beside the configs' ids (as vLLM stops on both): a
        # chat fine-tune names its turn end there while config.json still says the base model's EOS (found in
        # review: such a model ran past its turn to max_tokens).
        own = _token_id(file, eos_tok) if isinstance(eos_tok, str) and eos_tok else None
        if own is not None and own not in ids:
            ids.append(own)
        #: Token ids that end a generation: generation_config.json's (else config.json's) and eos_token's.
        self.eos_token_ids: tuple[int, ...] = tuple(ids)
        #: The named special tokens (bos_token, pad_token, ...) tokenizer_config.json sets, as text: in scope of the
        #: chat template, as transformers renders it (found in review: only bos and eos were, so a template reading
        #: pad_token rendered nothing).
        self.special_tokens: dict[str, str] = {
            k: v for k in SPECIAL_TOKEN_NAMES
            if isinstance(v := _token_text(self.config.get(k)), str)}
        self.bos_token: str | None = self.special_tokens.get("bos_token")
        self.eos_token: str | None = eos_tok
        self.chat_template: str | None = _pick_template(self.config.get("chat_template"), self.dir)
        self._template = None
        self._max_token_chars: int | None = None
        self._bytes: dict[int, bytes] = {}

    @property
    def _tok(self):
        """The `tokenizers` Tokenizer of tokenizer.json, parsed on first use (see the module's docstring)."""
        tok = self._parsed
        if tok is None:
            with self._parse_lock:
                if self._parsed is None:
                    self._parsed = _shared_parse(self._file)
                tok = self._parsed
        return tok.tok

    def _read_json(self, name: str) -> dict:
        p = os.path.join(self.dir, name)
        # found in review: a corrupt or non-object file failed the start with a bare JSONDecodeError or
        # AttributeError naming no file
        return json_object(p) if os.path.isfile(p) else {}

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def base_vocab_size(self) -> int:
        """Tokens of the tokenizer's own vocabulary, its added tokens aside."""
        return self._tok.get_vocab_size(with_added_tokens=False)

    @property
    def added_token_ids(self) -> list[int]:
        return list(self._tok.get_added_tokens_decoder())

    @property
    def max_token_chars(self) -> int:
        """Most characters one token stands for: the longest vocabulary entry (byte-level entries are one
        character per byte, so at least as long as the text they decode to). Computed once."""
        if self._max_token_chars is None:
            self._tok  # parsed here on first use
            parsed = self._parsed
            if parsed.max_chars is None:  # once per shared parse, not per model
                parsed.max_chars = max((len(t) for t in parsed.tok.get_vocab(with_added_tokens=True)), default=1)
            self._max_token_chars = parsed.max_chars
        return self._max_token_chars

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        try:
            return self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        except TypeError:
            # Found in review: a lone surrogate (Cluster.generate("x\ud800"), a file name's undecodable byte)
            # failed as tokenizers' own TypeError "TextInputSequence must be str", of a str; JSON bodies refuse it
            # before this. Looked for here, once it failed: the text's every character is not checked ahead.
            at = next((i for i, c in enumerate(text) if "\ud800" <= c <= "\udfff"), None) \
                if isinstance(text, str) else None
            if at is None:
                raise
            raise InvalidArgumentError(
                f"the text holds a lone UTF-16 surrogate, U+{ord(text[at]):04X} at character {at}, which is no "
                f"Unicode character and has no UTF-8 bytes to tokenize: pass valid text (a surrogate pair "
                f"'\\ud83d\\ude00' is written '\\U0001f600' in Python; bytes decoded with surrogateescape, "
                f"os.fsencode(text).decode('utf-8', 'replace'))", index=at,
                character=f"U+{ord(text[at]):04X}") from None

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_text(self, ids: list[int]) -> str:
        """The text a logprob lists for its token(s): their decode with special tokens kept ("<|im_end|>"), as
        vLLM lists them; the output text skips them (``decode``)."""
        return self.decode(ids, skip_special_tokens=False)

    def token_offsets(self, text: str, ids: list[int]) -> list[int] | None:
        """Where each token of ``text`` begins in ``text`` itself, from the encoding's own offsets (an echoed string
        prompt's ``text_offset``: the string as sent differs from its tokens' decode when special tokens are skipped
        or a normalizer rewrote it); never decreasing. None when ``text`` does not encode to ``ids``. A span that
        starts after whitespace the previous one left out begins at that whitespace: a ByteLevel post-processor with
        ``trim_offsets`` (GPT-2's) leaves each token's leading space out of its span (found in review: ' this' was
        placed at 'this')."""
        enc = self._tok.encode(text, add_special_tokens=True)
        if enc.ids != list(ids):
            return None
        out, last, end_before = [], 0, 0
        for start, end in enc.offsets:  # a special token the post-processor adds is at (0, 0), wherever it is
            if start > end_before and text[end_before:start].isspace():  # a trimmed space is the token's own
                start, end = end_before, max(end, start)
            end_before = max(end_before, end)
            last = max(last, start)
            out.append(last)
        return out

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (a chat logprob's ``bytes``): the UTF-8 of its text when that is whole
        text, else its vocabulary entry's raw bytes, for a token that holds part of a character (which decodes
        alone as U+FFFD): SentencePiece's byte-fallback ``<0xNN>``, or byte-level BPE's entry mapped back through
        GPT-2's byte-to-character table. Cached per id."""
        raw = self._bytes.get(token_id)
        if raw is None:
            text = self.token_text([token_id])
            piece = self._tok.id_to_token(token_id) if "\ufffd" in text else None
            byte = _BYTE_PIECE.fullmatch(piece) if piece is not None else None
            if byte is not None:
                raw = bytes([int(byte.group(1), 16)])
            elif piece is not None and all(c in _BYTE_OF_CHAR for c in piece):
                raw = bytes(_BYTE_OF_CHAR[c] for c in piece)
            else:
                raw = text.encode("utf-8")
            self._bytes[token_id] = raw
        return raw

    def compile_chat_template(self) -> None:
        """Parse the chat template once (a no-op without one). The controller calls it when it loads the model, so
        a template that does not parse stops `warmserve serve` at start rather than failing every chat."""
        if self._template is not None or not self.chat_template:
            return
        import jinja2

        try:
            self._template = _environment().from_string(self.chat_template)
        except jinja2.TemplateError as e:
            raise InvalidArgumentError(f"this model's chat template does not parse ({type(e).__name__}: {e}): "
                                       f"fix chat_template in {self.dir}", param="messages") from None

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text for a chat; messages are {"role": ..., "content": ...} dicts."""
        for m in messages:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise InvalidArgumentError(f"a chat message needs 'role' and 'content', got {m!r}")
        if not self.chat_template:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
            return text + ("assistant:" if add_generation_prompt else "")
        import jinja2

        self.compile_chat_template()
        if "developer" not in self.chat_template:
            # OpenAI's "developer" is the newer name of "system" (the API takes both), but a template that never
            # names it rendered it as an unknown role or refused it (found in review: Qwen's wrote
            # "<|im_start|>developer", strict ones raised "Unexpected message role"): it is the system turn. A
            # template that names "developer" gets it as sent.
            messages = [{**m, "role": "system"} if m["role"] == "developer" else m for m in messages]
        try:
            # tools and documents None, not undefined, as transformers passes them: an undefined one passes a
            # template's "tools is not none" (found in review: every plain chat got the tool section)
            return self._template.render(**{"bos_token": "", "eos_token": "", **self.special_tokens},
                                         messages=messages, add_generation_prompt=add_generation_prompt, tools=None,
                                         documents=None)
        except jinja2.TemplateError as e:
            raise InvalidArgumentError(f"this model's chat template could not render these messages "
                                       f"({type(e).__name__}: {e})", param="messages") from None


#: How much of tokenizer.json ``_token_id`` reads first: ``tokenizers`` writes added_tokens before the model, so
#: they are in it unless there are thousands of them.
_HEAD_BYTES = 1 << 20
_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
_MISSING = object()


class _Truncated(Exception):
    """The text read so far ends before the value looked for does."""


def _token_id(file: str, token: str) -> int | None:
    """What ``tokenizers.Tokenizer.from_file(file).token_to_id(token)`` gives, from the JSON alone: added_tokens' id
    for the token, else the model's vocabulary's. Reads the start of the file first and parses nothing after the
    vocabulary (the merges, most of a BPE file, never). Measured with a 4.4 MB, 150k-merge file: about 1 ms for a
    token among the added ones (where EOS tokens are), 0.1 s for one only in the vocabulary (the GIL held 60 ms),
    where ``from_file`` holds it 0.3-0.47 s. The file's id of an added
    token is the one ``tokenizers`` gives it: a file ``tokenizers`` wrote agrees, and one edited to disagree makes
    ``tokenizers`` warn on load ("was expected to have ID")."""
    try:
        with open(file, "rb") as f:
            head = f.read(_HEAD_BYTES)
            whole = len(head) < _HEAD_BYTES
            utf8 = codecs.getincrementaldecoder("utf-8")()
            text = utf8.decode(head, final=whole)
            while True:
                try:
                    return _token_id_in(text, token, whole)
                except _Truncated:
                    text += utf8.decode(f.read(), final=True)
                    whole = True
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
        raise InvalidArgumentError(f"{file} is not a tokenizer.json `tokenizers` can read ({type(e).__name__}: "
                                   f"{e}): replace it with the checkpoint's own", path=file) from None


def _token_id_in(text: str, token: str, whole: bool) -> int | None:
    added = _json_value(text, ("added_tokens",), whole)
    for t in added if isinstance(added, list) else ():
        if isinstance(t, dict) and t.get("content") == token and type(t.get("id")) is int:
            return t["id"]
    vocab = _json_value(text, ("model", "vocab"), whole)
    if isinstance(vocab, dict):
        i = vocab.get(token)
        return i if type(i) is int else None
    if isinstance(vocab, list):  # Unigram's [piece, score] pairs: the id is the position, the last one of a repeat
        return {p[0]: i for i, p in enumerate(vocab) if isinstance(p, list) and p}.get(token)
    return None


def _json_value(text: str, keys: tuple[str, ...], whole: bool):
    """The value at ``keys`` (object keys, outermost first) of the JSON document ``text``, or _MISSING. Only the
    values before it on the way are parsed, and not kept. ``whole``: ``text`` is the whole document, else its
    start, and _Truncated is raised when the value does not end within it."""
    try:
        i = 0
        for key in keys:
            i = _WS.match(text, i).end()
            if text[i] != "{":
                return _MISSING
            i = _WS.match(text, i + 1).end()
            if text[i] == "}":
                return _MISSING
            while True:
                k, i = _DECODER.raw_decode(text, i)
                i = _WS.match(text, i).end()
                if not isinstance(k, str) or text[i] != ":":
                    raise json.JSONDecodeError("expected a key and ':'", text, i)
                i = _WS.match(text, i + 1).end()
                if k == key:
                    break
                i = _WS.match(text, _DECODER.raw_decode(text, i)[1]).end()
                if text[i] == "}":
                    return _MISSING
                if text[i] != ",":
                    raise json.JSONDecodeError("expected ',' or '}'", text, i)
                i = _WS.match(text, i + 1).end()
        value, end = _DECODER.raw_decode(text, i)
        if not whole and end >= len(text):  # a number may go on past the text read
            raise _Truncated
        return value
    except IndexError:
        if not whole:
            raise _Truncated from None
        raise json.JSONDecodeError("the document ends early", text, len(text)) from None
    except json.JSONDecodeError:
        if not whole:  # the error may be the cut: read on (a real one is raised again from the whole text)
            raise _Truncated from None
        raise


#: SentencePiece's byte-fallback tokens, one byte each.
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_of_char() -> dict[str, int]:
    """Byte-level BPE's vocabulary alphabet (GPT-2's bytes_to_unicode) inverted: printable bytes stand for
    themselves, the others for the characters from U+0100 on, in byte order."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
            *range(ord("\u00ae"), ord("\u00ff") + 1)]
    shifted = [b for b in range(256) if b not in kept]
    return {**{chr(b): b for b in kept}, **{chr(256 + i): b for i, b in enumerate(shifted)}}


_BYTE_OF_CHAR = _byte_of_char()


def _pick_template(value, directory: str) -> str | None:
    """The chat template: chat_template.jinja in the checkpoint (where newer checkpoints keep it; it wins over
    tokenizer_config.json's, as in transformers: found in review, a template updated in the file alone was not
    used), else tokenizer_config.json's string, or the "default" one of its list of named templates."""
    path = os.path.join(directory, "chat_template.jinja")
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as e:  # found in review: `serve` stopped on a bare UnicodeDecodeError, no file named
            raise CheckpointError(f"{path} is not UTF-8 text ({e}): fix or re-download it", path=path) from None
        if text:
            return text
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default")
    return value if isinstance(value, str) and value else None


#: The named special tokens transformers puts in a chat template's scope (its SPECIAL_TOKENS_ATTRIBUTES).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _token_text(entry) -> str | None:
    """A special token's text from tokenizer_config.json: a string, or an AddedToken object's content."""
    return entry.get("content") if isinstance(entry, dict) else entry


def _generation_extension():
    """The ``{% generation %}...{% endgeneration %}`` block of templates that mark assistant turns (transformers
    uses it for assistant-token masks): its body rendered as is (found in review: such a template did not parse)."""
    import jinja2.ext
    import jinja2.nodes

    class Generation(jinja2.ext.Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    return Generation


def _environment():
    import datetime

    import jinja2
    import jinja2.ext
    import jinja2.sandbox

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[jinja2.ext.loopcontrols,
                                                                   _generation_extension()])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_template_error
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # jinja2's own tojson escapes HTML characters; chat templates want the plain JSON text, as Hugging Face's has
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_template_error(msg: str):
    raise InvalidArgumentError(f"this model's chat template refuses these messages: {msg}", param="messages")
