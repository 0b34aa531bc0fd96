"""Found in review: config files that are not plain UTF-8. A TOML file with a UTF-8 byte-order mark (Windows
editors write one) was refused as "Invalid statement (at line 1, column 1)" while the same YAML loaded; a UTF-16
or Latin-1 file failed with a bare "'utf-8' codec can't decode byte 0xff" naming no file. Now a BOM is dropped,
and other bytes are refused naming the file and the encoding it must have (exit 2 from `warmserve serve`)."""

from __future__ import annotations

import pytest

from warmserve import cli
from warmserve.config_file import load_config
from warmserve.errors import InvalidArgumentError

TOML = 'cpu_workers = 1\n[[models]]\npath = "/ckpt/llama-20m"  # café\n'
YAML = "cpu_workers: 1\nmodels:\n  - /ckpt/llama-20m  # café\n"


def test_a_utf8_byte_order_mark_is_taken_in_toml_as_in_yaml(tmp_path):
    for name, text in (("c.toml", TOML), ("c.yaml", YAML)):
        f = tmp_path / name
        f.write_bytes(b"\xef\xbb\xbf" + text.encode())
        cfg = load_config(str(f))
        assert cfg.cpu_workers == 1 and [m.path for m in cfg.models] == ["/ckpt/llama-20m"], name


@pytest.mark.parametrize("name, data, what", [
    ("u16.toml", TOML.encode("utf-16"), "is UTF-16 text"),
    ("l1.toml", TOML.encode("latin-1"), "is not UTF-8 text"),
    ("l1.yaml", YAML.encode("latin-1"), "is not UTF-8 text"),
    ("bom-l1.toml", b"\xef\xbb\xbf" + TOML.encode("latin-1"), "is not UTF-8 text"),
])
def test_other_encodings_are_refused_naming_the_file_and_utf8(tmp_path, capsys, monkeypatch, name, data, what):
    from warmserve.controller import serve

    async def no_server(*a, **k):
        raise AssertionError("the file was taken: the server started")

    monkeypatch.setattr(serve, "serve", no_server)
    f = tmp_path / name
    f.write_bytes(data)
    with pytest.raises(InvalidArgumentError) as e:
        load_config(str(f))
    msg = str(e.value)
    assert f"config file {str(f)!r} {what}" in msg and "must be UTF-8" in msg and e.value.path == str(f), msg
    if "l1" in name:  # the offset of the byte in the file, BOM or not
        at = data.index(b"\xe9")
        assert f"byte 0xe9 at offset {at}" in msg, msg
    assert cli.main(["serve", "--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert str(f) in err and "UTF-8" in err and "codec" not in err and "Traceback" not in err
