"""Found in review: YAML 1.1 (PyYAML) reads an integer with a leading 0 as octal, and the config reader took it
silently: `port: 0700` gave 448, `max_queue: 0100` 64, `instance_capacity: 010` 8, while `port: 0800` (no octal
number, read as text) was refused with a hint. Every integer YAML reads in another base (a leading 0, 0x, 0b, and
0o, which YAML 1.1 reads as text) is now refused naming the key and the plain number to write."""

from __future__ import annotations

import pytest

from warmserve.config_file import load_config
from warmserve.errors import InvalidArgumentError


def _load(tmp_path, text):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    return load_config(str(f))


@pytest.mark.parametrize("table, key, text, plain", [("server", "port", "0700", "700"),
                                                     ("controller", "max_queue", "0100", "100"),
                                                     ("policy", "instance_capacity", "010", "10"),
                                                     ("server", "port", "0x1F90", "8080"),
                                                     ("server", "port", "0b1010", "10"),
                                                     ("server", "port", "0o17620", "8080")])
def test_an_integer_yaml_reads_in_another_base_is_refused_naming_the_key_and_the_plain_number(tmp_path, table, key,
                                                                                              text, plain):
    with pytest.raises(InvalidArgumentError, match=rf"\b{key}\b.*{text}.*write {plain}\b") as e:
        _load(tmp_path, f"{table}:\n  {key}: {text}\n")
    assert e.value.key == key


def test_the_reviewers_file_is_refused_at_its_first_octal_number(tmp_path):
    with pytest.raises(InvalidArgumentError, match=r"port.*0700.*octal.*448.*write 700") as e:
        _load(tmp_path, "server:\n  port: 0700\ncontroller:\n  max_queue: 0100\n")
    assert e.value.key == "port" and e.value.line == 2


def test_an_octal_number_in_a_list_is_refused_too(tmp_path):
    with pytest.raises(InvalidArgumentError, match=r"07.*write 7\b"):
        _load(tmp_path, "server:\n  port: [07]\n")


def test_decimal_numbers_and_zero_still_load_and_0800_keeps_its_hint(tmp_path):
    c = _load(tmp_path, "server:\n  port: 8700\ncontroller:\n  max_queue: 1_000\n")
    assert c.server.port == 8700 and c.controller.max_queue == 1000
    assert _load(tmp_path, "server:\n  port: 0\n").server.port == 0
    with pytest.raises(InvalidArgumentError, match="leading 0 means octal to YAML.*write 800"):
        _load(tmp_path, "server:\n  port: 0800\n")
