"""A JSON request body decoded into the API's request structs (``openai_api``), with 400s that say what is wrong
and where. Apart from ``body`` (reading the bytes), which imports aiohttp: ``warmserve.Cluster`` uses the
request structs without it."""

from __future__ import annotations

import re

import msgspec

from warmserve.errors import InvalidArgumentError


def decode_json(body: bytes, cls):
    """The JSON request body as a ``cls`` struct, or an InvalidArgumentError (a 400) that says what is wrong and
    where: a field's type (named as ``param``), malformed JSON, bad UTF-8, a lone surrogate escape, deep nesting."""
    if not body:
        raise InvalidArgumentError("the request body is empty; send a JSON object")
    try:
        # lax, as vLLM's pydantic models are: 5.0 is max_tokens 5, "0.5" a temperature, 1 a chat's logprobs true
        # (found in review: clients that compute a count as a float got a 400); 5.5 is still refused
        return msgspec.json.decode(body, type=cls, strict=False)
    except msgspec.ValidationError as e:
        req = _as_pydantic_reads(body, cls, e)
        if req is not None:
            return req
        # msgspec names the offending path, e.g. "Expected `int`, got `str` - at `$.max_tokens`", and a missing
        # field apart: "Object missing required field `role` - at `$.messages[0]`" is messages[0].role (found in
        # review: a missing model, prompt or messages had param null)
        text = str(e)
        param = text.rsplit("`$.", 1)[-1].rstrip("`") if "`$." in text else None
        missing = re.match(r"Object missing required field `([^`]+)`", text)
        if missing:
            param = f"{param}.{missing[1]}" if param else missing[1]
        raise InvalidArgumentError(f"invalid request: {text}", param=param) from None
    except msgspec.DecodeError as e:
        try:  # msgspec 0.23 reports bad UTF-8 as a DecodeError ("Invalid UTF-8 encoded string"); 0.22 raised
            body.decode("utf-8")  # UnicodeDecodeError: either way the client is told where and how
        except UnicodeDecodeError as bad:
            raise InvalidArgumentError(_utf8_message(body, bad)) from None
        # Found in review: a string with a lone surrogate escape ("\ud800x", valid JSON grammar) was refused as
        # "Input data was truncated", msgspec's message for a high surrogate not followed by an escape; nothing
        # was truncated. msgspec calls other unpaired ones "invalid" or an "unexpected end" of a surrogate pair.
        lone = _lone_surrogate(body) if "truncated" in str(e) or "surrogate" in str(e) else None
        if lone is not None:
            escape = body[lone:lone + 6].decode("ascii")
            raise InvalidArgumentError(
                f"malformed JSON in the request body: the string at byte {lone} holds an unpaired UTF-16 "
                f"surrogate escape ({escape}); text must be valid Unicode: send the character itself, or a "
                "valid surrogate pair (a high \\ud800-\\udbff escape followed by a low \\udc00-\\udfff "
                "one, such as \\ud83d\\ude00 for U+1F600)") from None
        raise InvalidArgumentError(f"malformed JSON in the request body: {e}") from None
    except UnicodeDecodeError as e:
        raise InvalidArgumentError(_utf8_message(body, e)) from None
    except RecursionError:  # found in review: a 2 KB body of nested arrays was a 500 and a logged traceback
        raise InvalidArgumentError("JSON nested too deeply in the request body: send a flatter JSON object") from None


#: The words pydantic's lax mode (vLLM's request models) takes for a bool, lower-cased.
_BOOL_WORDS = {"1": True, "t": True, "y": True, "on": True, "yes": True, "true": True,
               "0": False, "f": False, "n": False, "no": False, "off": False, "false": False}
#: A msgspec refusal of a value pydantic's lax mode may take: its expected type, the value's type and its path.
_WRONG_TYPE = re.compile(
    r"^Expected `(int|float|bool)(?: \| null)?`, got `(bool|str|float)` - at `\$((?:\.\w+|\[\d+\])+)`$")
#: Most values one body may have converted so (each is one more msgspec.convert of the body); past it a 400.
_MAX_LAX_VALUES = 16


def _as_pydantic_reads(body: bytes, cls, error: msgspec.ValidationError):
    """The body as a ``cls`` struct with the values msgspec's lax mode refuses but pydantic's takes converted as
    pydantic converts them: a bool for a number (``"logprobs": true`` on completions is 1 in vLLM), pydantic's
    words for a bool ("yes", "off"), 0.0 or 1.0 for a bool. Found in review: docs/api.md says values are read as
    vLLM's models read them, and these were 400s. None when the error is another one: it stands."""
    try:
        obj = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    for converted in range(_MAX_LAX_VALUES + 1):
        m = _WRONG_TYPE.match(str(error))
        if m is None:
            return None
        want, got, path = m.groups()
        if converted == _MAX_LAX_VALUES:  # bounded: each conversion decodes the whole body again
            raise InvalidArgumentError(
                f"invalid request: more than {_MAX_LAX_VALUES} values need converting (a bool for a number, a word "
                f"for a bool), the next at {path[1:]}: send JSON numbers and booleans", param=path[1:])
        try:
            parent, key = obj, None
            for name, index in re.findall(r"\.(\w+)|\[(\d+)\]", path):
                parent = parent if key is None else parent[key]
                key = name if name else int(index)
            value = parent[key]
        except (KeyError, IndexError, TypeError):
            return None
        if got == "bool" and want != "bool":
            parent[key] = int(value) if want == "int" else float(value)
        elif want == "bool" and got == "str" and value.lower() in _BOOL_WORDS:
            parent[key] = _BOOL_WORDS[value.lower()]
        elif want == "bool" and got == "float" and value in (0.0, 1.0):
            parent[key] = bool(value)
        else:
            return None
        try:
            return msgspec.convert(obj, type=cls, strict=False)
        except msgspec.ValidationError as again:
            error = again


#: A JSON escape of a UTF-16 surrogate (U+D800-U+DFFF): backslash, "u", 4 hex digits, after an even number of
#: backslashes (after an odd number the backslash is itself escaped, and "ud800" is text).
_SURROGATE_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u([dD][89a-fA-F][0-9a-fA-F]{2})")
#: What a body that ends inside an escape ends with.
_CUT_ESCAPE = re.compile(rb"(?:\\(?:u[0-9a-fA-F]{0,3})?)?")


def _lone_surrogate(body: bytes) -> int | None:
    """Where (a byte offset) the body's first unpaired surrogate escape begins: a low one with no high one right
    before it, or a high one with no low one right after it. None when there is none, or when the body ends
    right after a high one or inside the escape after it (its pair may have been cut off: truly truncated)."""
    high = None  # the offset of a high surrogate's escape, waiting for its low one
    for m in _SURROGATE_ESCAPE.finditer(body):
        at, code = m.start(1) - 2, int(m[1], 16)
        if high is not None:
            if at == high + 6 and code >= 0xDC00:
                high = None
                continue
            return high
        if code >= 0xDC00:
            return at
        high = at
    if high is None or _CUT_ESCAPE.fullmatch(body, high + 6):
        return None
    return high


def _utf8_message(body: bytes, e: UnicodeDecodeError) -> str:
    try:
        body.decode("utf-8")
        where = ""
    except UnicodeDecodeError as whole:  # the position in the body, not in the string msgspec was decoding
        where = f" at byte {whole.start} (0x{body[whole.start]:02x})"
    return f"The request body is not valid UTF-8{where}: {e.reason}. Send the JSON text encoded as UTF-8."
