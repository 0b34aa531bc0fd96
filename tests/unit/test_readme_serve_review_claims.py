"""README's "## Serve" section checked against `warmserve serve`, in review: a key with whitespace at an end is refused
wherever it comes from (`--api-key`, `$WARMSERVE_API_KEY`, the file's `server.api_key`), and the refusal names where
it came from. Found in review: a `$WARMSERVE_API_KEY` read from a file with its newline was refused as
"--api-key: ...", a flag the operator never gave."""

from __future__ import annotations

import argparse

import pytest

from warmserve.controller import serve as S
from warmserve.errors import InvalidArgumentError


def _args(argv):
    p = argparse.ArgumentParser()
    S.add_arguments(p)
    return p.parse_args(argv)


def test_a_bad_key_from_the_environment_is_not_blamed_on_the_api_key_flag(monkeypatch):
    monkeypatch.setenv("WARMSERVE_API_KEY", "s3cret\n")
    with pytest.raises(InvalidArgumentError, match="whitespace") as e:
        S.build_config(_args([]))
    assert not e.value.message.startswith("--api-key"), e.value.message
    assert "$WARMSERVE_API_KEY" in e.value.message and "flag" not in e.value.fields
    monkeypatch.delenv("WARMSERVE_API_KEY")
    with pytest.raises(InvalidArgumentError, match="whitespace") as e:  # the flag's own value: named by it
        S.build_config(_args(["--api-key", "s3cret "]))
    assert e.value.message.startswith("--api-key: ") and e.value.fields["flag"] == "--api-key"


def test_other_flags_are_still_named_when_their_value_is_refused(monkeypatch):
    monkeypatch.delenv("WARMSERVE_API_KEY", raising=False)
    with pytest.raises(InvalidArgumentError) as e:
        S.build_config(_args(["--port", "-1"]))
    assert e.value.message.startswith("--port: ")


def test_the_access_log_follows_log_level():
    """README: at --log-level INFO (the default) each request writes an access-log line; WARNING drops them (found
    in review: the README said every request writes one, whatever --log-level)."""
    import logging

    from warmserve.controller.api import access_log

    assert access_log.level == logging.NOTSET  # no level of its own: the root's, which --log-level sets
    root, was = logging.getLogger(), logging.getLogger().level
    try:  # setLevel, not an attribute: it clears the loggers' isEnabledFor cache
        root.setLevel(logging.WARNING)
        assert not access_log.isEnabledFor(logging.INFO)
        root.setLevel(logging.INFO)
        assert access_log.isEnabledFor(logging.INFO)
    finally:
        root.setLevel(was)
