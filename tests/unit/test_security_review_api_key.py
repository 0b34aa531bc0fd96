"""The HTTP API key as `warmserve serve` takes it, from a security review: an empty `--api-key` (README's
`--api-key "$KEY"` with KEY unset) turned authentication off over the config file's key, and a key with whitespace
at an end (a key file's trailing newline) was accepted at start but matched no request, ever."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from warmserve.config import ServerConfig
from warmserve.controller import serve as S
from warmserve.controller.api import Api
from warmserve.errors import InvalidArgumentError


def _args(argv):
    p = argparse.ArgumentParser()
    S.add_arguments(p)
    return p.parse_args(argv)


def test_an_empty_api_key_flag_is_refused_not_taken_as_no_key(tmp_path, monkeypatch):
    cfg = tmp_path / "cluster.toml"
    cfg.write_text('[server]\napi_key = "from-config-file"\n')
    monkeypatch.setenv("WARMSERVE_API_KEY", "from-env")
    with pytest.raises(InvalidArgumentError, match="--api-key") as e:
        S.build_config(_args(["--config", str(cfg), "--api-key", ""]))
    assert "leave --api-key out" in str(e.value)
    # The flag left out: the environment's key, then the file's, as before.
    assert S.build_config(_args(["--config", str(cfg)])).server.api_key == "from-env"
    monkeypatch.setenv("WARMSERVE_API_KEY", "")
    assert S.build_config(_args(["--config", str(cfg)])).server.api_key == "from-config-file"


def test_serve_with_an_empty_api_key_exits_2_naming_the_flag():
    r = subprocess.run([sys.executable, "-m", "warmserve", "serve", "--api-key", "", "--port", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "--api-key" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("key", ["s3cret\n", " s3cret", "s3cret\t", "\ns3cret\r\n"])
def test_an_api_key_with_whitespace_at_an_end_is_refused(key, tmp_path, monkeypatch):
    with pytest.raises(InvalidArgumentError, match="whitespace") as e:
        ServerConfig(api_key=key)
    assert "newline" in str(e.value) and "s3cret" not in str(e.value)  # the key itself stays out of logs
    monkeypatch.setenv("WARMSERVE_API_KEY", key)
    with pytest.raises(InvalidArgumentError, match="WARMSERVE_API_KEY"):
        S.build_config(_args([]))
    monkeypatch.delenv("WARMSERVE_API_KEY")
    cfg = tmp_path / "cluster.toml"
    cfg.write_text(f"[server]\napi_key = {key!r}\n".replace("'", '"'))
    with pytest.raises(InvalidArgumentError, match="whitespace"):
        S.build_config(_args(["--config", str(cfg)]))
    with pytest.raises(InvalidArgumentError, match="whitespace"):
        Api(controller=None, api_key=key)
    assert ServerConfig(api_key="a b").api_key == "a b"  # inside a key, a space is sent as it is

