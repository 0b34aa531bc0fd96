"""Checks at start of a served model's name and checkpoint path as text: what every later use of them needs.

The name is in log lines, JSON bodies, Prometheus labels and URLs (``GET /v1/models/NAME``); the path travels to
workers as UTF-8 text in MessagePack. Found in review: both were taken as they came, so a name or a path that
these could not carry was accepted, and the server said it was ready before it failed.
"""

from __future__ import annotations

import os
import unicodedata

from warmserve.errors import InvalidArgumentError

#: Unicode categories a name may not hold: control characters (C0, DEL, C1: a newline, a tab, an escape that
#: recolours a terminal), and the line and paragraph separators that log readers and ``str.splitlines`` break on.
_REFUSED_CATEGORIES = {"Cc": "a control character", "Zl": "a line separator", "Zp": "a paragraph separator"}


def _raw(text: str) -> bytes:
    """The bytes a string decoded by the OS (argv, a file name: ``surrogateescape``) came from; a lone surrogate
    of another origin (a Python caller's "\\ud800") as its UTF-8-like three bytes."""
    try:
        return os.fsencode(text)
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _shown(text: str) -> str:
    """``text`` as an error field any JSON or log can carry: bytes that are no UTF-8 as backslash escapes."""
    return _raw(text).decode("utf-8", "backslashreplace")


def check_model_name(name: str, path: str) -> None:
    """Refuse a name that a log line, a JSON body, a metrics label or a URL cannot carry as it is.

    Found in review: ``name = "a\\nb"`` split the controller's log lines in two (a name could write a line that
    looked like the server's own) and ``GET /v1/models/a%0Ab`` was a 404; a name with a byte that is not UTF-8
    (``--model /ckpt/m=$'n\\xff'``, or a folder so named, the default name) made ``/v1/models``, ``/stats`` and
    ``/metrics`` answer an error, each time, while the server served."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError(
            f"model name {name!r} is not UTF-8 text (its bytes: {_raw(name)!r}): the API, the logs and the metrics "
            f"carry names as UTF-8; give a UTF-8 name (name = ... in the config file, --model {_shown(path)}=NAME)",
            name=_shown(name), path=_shown(path)) from None
    for i, ch in enumerate(name):
        what = _REFUSED_CATEGORIES.get(unicodedata.category(ch))
        if what is not None:
            raise InvalidArgumentError(
                f"model name {name!r} holds {what} (U+{ord(ch):04X} at character {i}), which would split or garble "
                f"the log lines that name the model: give a name without one (name = ... in "
                f"the config file, --model {_shown(path)}=NAME)", name=name, path=_shown(path),
                character=f"U+{ord(ch):04X}")


def check_model_path(path: str, name: str) -> None:
    """Refuse a checkpoint path that is not UTF-8 text: workers are sent it so (found in review: the server said
    it was ready and every request was a 500 after three failed starts, "surrogates not allowed")."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError(
            f"model {name!r}: the checkpoint path {_raw(path)!r} holds bytes that are not UTF-8, and workers are "
            f"sent the path as UTF-8 text: rename the folder, or point at a UTF-8 link to it (ln -s ... /ckpt/model)",
            name=_shown(name), path=_shown(path)) from None
