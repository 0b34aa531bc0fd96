"""The configuration reference (``docs/config.md``), written from the configuration classes themselves: every key
of every table of a config file, its default and the ``#:`` comment above its field, so the page cannot drift from
the code (``tests/unit/test_config_reference.py`` checks the page is current and every field has its comment).

Regenerate with ``python -m warmserve.config_reference > docs/config.md``.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import textwrap

#: A field line in a class body: ``    name: type`` with an optional ``= default``.
_FIELD = re.compile(r"^    (\w+): [^=]+?(?: = .*)?$")


def field_comments(cls) -> dict[str, str]:
    """Each field of ``cls`` (a dataclass or msgspec struct) and the ``#:`` comment lines just above it, joined."""
    out: dict[str, str] = {}
    said: list[str] = []
    for line in textwrap.dedent(inspect.getsource(cls)).splitlines()[1:]:
        stripped = line.strip()
        if line.startswith("    #:"):
            said.append(stripped[2:].strip())
        elif (m := _FIELD.match(line)) is not None:
            if said:
                out[m.group(1)] = " ".join(said)
            said = []
        elif line.startswith("    def ") or line.startswith("    @"):
            break
        elif not stripped.startswith("#"):
            said = []
    return out


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def _defaults(cls) -> dict[str, object]:
    if dataclasses.is_dataclass(cls):
        out = {}
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
        return out
    return {name: getattr(cls(), name) for name in cls.__struct_fields__}


def tables() -> list[tuple[str, type, str]]:
    """The file's tables: (heading, class, what the table is)."""
    from warmserve.config import ClusterConfig, ControllerConfig, ModelSpec, ServerConfig
    from warmserve.policy.config import PolicyConfig
    from warmserve.protocol import EngineConfig

    return [
        ("top level", ClusterConfig, "What to serve and where: the keys at the top of the file."),
        ("[[models]]", ModelSpec, "One table per model served; `path` is required, relative paths are taken from "
                                  "the config file's folder."),
        ("[controller]", ControllerConfig, "How the controller talks to workers and runs the policy loop."),
        ("[policy]", PolicyConfig, "The policy's knobs. A `policy` name other than `warmserve` (the baselines and "
                                   "ablations) sets some of them itself: `warmserve simulate --help` lists the names."),
        ("[engine]", EngineConfig, "Limits of every instance's engine, sent with each activation."),
        ("[server]", ServerConfig, "The OpenAI-compatible HTTP server (`warmserve serve`)."),
    ]


def table_keys(heading: str, cls) -> list[str]:
    """The keys of table ``heading`` in the order of ``cls``'s fields: those the loader takes there
    (``config_file._table_keys``, which also points a key in the wrong table to its own); every field of a model."""
    from warmserve.config_file import _table_keys

    names = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else list(cls.__struct_fields__)
    keys = _table_keys().get(heading)
    return names if keys is None else [n for n in names if n in keys]


def markdown() -> str:
    """The whole reference page. Raises ``ValueError`` naming a field that has no ``#:`` comment."""
    parts = ["# Configuration reference", "",
             "Every key a config file (`warmserve serve --config cluster.toml`, TOML or YAML) takes, by table,",
             "with its default. Written from the configuration classes",
             "(`python -m warmserve.config_reference > docs/config.md`); the same names are the fields of",
             "`warmserve.ClusterConfig` and its parts in the Python API. A key in the wrong table, or misspelt, is",
             "refused at start naming the table or key meant.", ""]
    for heading, cls, about in tables():
        said = field_comments(cls)
        defaults = _defaults(cls)
        names = table_keys(heading, cls)
        missing = [n for n in names if n not in said]
        if missing:
            raise ValueError(f"{cls.__name__}: fields {missing} have no #: comment to document them")
        parts += [f"## {heading}", "", about, "", "| key | default | meaning |", "|---|---|---|"]
        for n in names:
            default = _toml(defaults[n]) if n in defaults else "(required)"
            parts.append(f"| `{n}` | `{default}` | {said[n].replace('|', '&#124;')} |")
        parts.append("")
    return "\n".join(parts)


if __name__ == "__main__":
    print(markdown(), end="")
