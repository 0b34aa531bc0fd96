"""ServerConfig.allowed_origins (CORS, opt-in): validated as origins, read from the config file's [server] table and
from `warmserve serve --allowed-origins`. Before: no such setting (a browser page on another origin could not use
the API)."""

import argparse

import pytest

from warmserve.config import ServerConfig
from warmserve.config_file import load_config
from warmserve.controller import serve
from warmserve.errors import InvalidArgumentError


def test_default_is_no_origin():
    assert ServerConfig().allowed_origins == ()


@pytest.mark.parametrize("given, kept", [
    (("http://localhost:3000",), ("http://localhost:3000",)),
    (("*",), ("*",)),
    (["https://Chat.Example.com", "http://[::1]:8080"], ("https://chat.example.com", "http://[::1]:8080")),
    # browsers leave a default port out of Origin: one given is dropped, so that it matches
    (("https://chat.example.com:443", "http://h:80", "http://h:443"),
     ("https://chat.example.com", "http://h", "http://h:443")),
    ("http://localhost:3000, https://chat.example.com", ("http://localhost:3000", "https://chat.example.com")),
    ("", ()),
])
def test_origins_kept_as_browsers_send_them(given, kept):
    assert ServerConfig(allowed_origins=given).allowed_origins == kept


@pytest.mark.parametrize("bad, says", [
    ("http://localhost:3000/", "drop the path: write http://localhost:3000"),
    ("https://chat.example.com/app", "drop the path: write https://chat.example.com"),
    ("localhost:3000", "give its scheme: write http://localhost:3000"),
    ("http://localhost:99999", "port in 1-65535"),
    ("http://user@host", "scheme://host[:port]"),
    ("null", "give its scheme"),
    ("http://", "scheme://host[:port]"),
])
def test_a_bad_origin_is_refused_naming_it_and_the_fix(bad, says):
    with pytest.raises(InvalidArgumentError) as e:
        ServerConfig(allowed_origins=("http://ok.example", bad))
    assert repr(bad) in e.value.message and says in e.value.message, e.value.message
    assert "allowed_origins" in e.value.message


@pytest.mark.parametrize("bad", [3, ("http://a", 7), {"http://a": 1}])
def test_no_list_of_strings_is_refused(bad):
    with pytest.raises(InvalidArgumentError, match="allowed_origins"):
        ServerConfig(allowed_origins=bad)


def test_read_from_the_config_files_server_table(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[server]\nallowed_origins = ["http://localhost:3000", "*"]\n')
    assert load_config(str(f)).server.allowed_origins == ("http://localhost:3000", "*")
    f.write_text('[server]\nallowed_origins = ["http://localhost:3000/"]\n')
    with pytest.raises(InvalidArgumentError, match="drop the path"):
        load_config(str(f))


def test_the_flag_overrides_the_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[server]\nallowed_origins = ["http://file.example"]\n')
    p = argparse.ArgumentParser()
    serve.add_arguments(p)
    assert serve.build_config(p.parse_args(["--config", str(f)])).server.allowed_origins == ("http://file.example",)
    args = p.parse_args(["--config", str(f), "--allowed-origins", "http://localhost:3000,https://b.example"])
    assert serve.build_config(args).server.allowed_origins == ("http://localhost:3000", "https://b.example")
    with pytest.raises(InvalidArgumentError, match="give its scheme"):
        serve.build_config(p.parse_args(["--allowed-origins", "localhost:3000"]))
