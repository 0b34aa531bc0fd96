"""A TOML or YAML syntax error names the file, the line and the column, quotes that line with a caret under the
column, and says the fix (found in review: YAML's message named "<unicode string>" instead of the file, and TOML's
kept the position inside its own sentence, with neither in the error's fields)."""

from __future__ import annotations

import pytest

from warmserve.config_file import load_config
from warmserve.errors import InvalidArgumentError


@pytest.mark.parametrize("name, text, line, column, says", [
    ("a.yaml", "cpu_workers: 1\nserver:\n  port: 1\n   host: x\n", 4, 8, "mapping values are not allowed here"),
    ("b.yaml", "devices: [cpu:0, cpu:1\nserver: 3\n", 2, 7,
     r"expected ',' or '\]', but got ':' \(while parsing a flow sequence at line 1, column 10\)"),
    ("c.yaml", "server:\n\tport: 1\n", 2, 1, "found character '\\\\t' that cannot start any token"),
    ("d.yaml", "cpu_workers: 1\nname: \x07\n", 2, 7, "special characters are not allowed"),
    ("e.toml", "cpu_workers = 1\n[server\nport = 2\n", 2, 8, "Expected ']' at the end of a table declaration"),
    ("f.toml", "cpu_workers = 1\ndevices = [\"cpu:0\",, ]\n", 2, 20, "Invalid value"),
])
def test_a_syntax_error_names_file_line_and_column(tmp_path, name, text, line, column, says):
    f = tmp_path / name
    f.write_text(text)
    kind = "YAML" if name.endswith(".yaml") else "TOML"
    with pytest.raises(InvalidArgumentError, match=rf"config file '.*{name}', line {line}, column {column}: not "
                                                   rf"valid {kind}: {says}") as e:
        load_config(str(f))
    assert (e.value.path, e.value.line, e.value.column) == (str(f), line, column)
    msg = str(e.value)
    quoted = text.splitlines()[line - 1]
    assert f"\n    {quoted}\n    {' ' * (column - 1)}^\n" in msg, msg
    assert f"Fix: correct the {kind} there" in msg and "<unicode string>" not in msg, msg


def test_an_error_at_the_end_of_the_text_names_the_line_after_it(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("server: {port: 1\n")
    with pytest.raises(InvalidArgumentError, match=r"line 2, column 1: not valid YAML: expected ',' or '\}', but got "
                                                   r"'<stream end>' \(while parsing a flow mapping at line 1, "
                                                   r"column 9\)") as e:
        load_config(str(f))
    assert e.value.line == 2
