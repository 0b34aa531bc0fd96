"""The config file: TOML or YAML read into the one ``ClusterConfig`` tree of ``config.py``.

``read_config_file`` reads the text (relative paths made relative to the file), ``cluster_config_from_dict``
builds and checks the tree, ``load_config`` is both; ``warmserve serve --config`` reads its file with them.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re

from warmserve.config import (POLICY_INF_HINT, ClusterConfig, ControllerConfig, ModelSpec, ServerConfig,
                              check_policy_numbers, policy_number_ok)
from warmserve.errors import InvalidArgumentError
from warmserve.policy.config import PolicyConfig, policy_config_from_dict
from warmserve.protocol import EngineConfig


def _build(cls, data: dict, where: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _refuse_unknown(data, fields, where)
    out = {}
    for k, v in data.items():
        if isinstance(v, list):
            v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
        default = fields[k].default
        if isinstance(v, int) and not isinstance(v, bool) and isinstance(default, float):
            v = float(v)
        # The type of the field's default, checked here: a value of another type ("2" for a count, a string of
        # seconds) failed later with a bare TypeError naming no key (found in review).
        kind = type(default) if default is not dataclasses.MISSING and default is not None else None
        if kind in (bool, int, float, str) and (type(v) is not kind):
            raise _wrong_type(where, k, v, kind)
        if kind is float and not math.isfinite(v):
            raise InvalidArgumentError(f"config {where}: {k} must be a finite number, got {v!r}", key=k)
        out[k] = v
    return cls(**out)


def _wrong_type(where: str, key: str, value, kind: type) -> InvalidArgumentError:
    """The error for ``value`` of ``key`` not of the type ``kind`` the key takes (text where a number belongs: how
    to write it as one)."""
    what = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}[kind]
    return InvalidArgumentError(f"config {where}: {key} must be {what}, got {value!r}{_as_text_hint(value, kind)}",
                                key=key)


def _table_keys() -> dict[str, frozenset]:
    """Each table of the file and its keys, for pointing a key written in the wrong table to its own."""
    def names(cls):
        return frozenset(f.name for f in dataclasses.fields(cls))

    return {"top level": names(ClusterConfig) - {"controller", "engine", "server", "models"},
            "[controller]": names(ControllerConfig) - {"policy_config"}, "[policy]": names(PolicyConfig),
            "[engine]": frozenset(EngineConfig.__struct_fields__), "[server]": names(ServerConfig)}


def _refuse_unknown(data: dict, known, where: str) -> None:
    """Refuse keys of ``data`` not in ``known``, naming for each the nearest known key (a misspelling), or the
    table that has it (a key in the wrong table: found in review, `tick` in [policy] was told only the list of
    [policy]'s 40 keys, with tick_s in [controller] none of them)."""
    unknown = sorted(set(map(str, data)) - set(known))
    if not unknown:
        return
    # The top level's own tables are keys there too: `polcy:` is nearest to the [policy] table.
    candidates = sorted(set(known) | ({"policy", "cluster"} if where == "top level" else set()))
    elsewhere = {k: table for table, keys in reversed(_table_keys().items())
                 if table != where and keys != set(known) for k in keys}
    hints = {}
    for key in unknown:
        near = difflib.get_close_matches(key, candidates, n=1)
        if key in elsewhere:  # the right key in the wrong table: the table, ahead of a near name here (found in
            # review: worker_timeout_s at the top level was told "did you mean 'worker_start_timeout_s'?")
            hints[key] = f"{key!r} (a {elsewhere[key]} key)" if elsewhere[key].startswith("[") else f"top-level {key!r}"
        elif near:
            hints[key] = repr(near[0])
        elif near := difflib.get_close_matches(key, sorted(elsewhere), n=1):
            table = elsewhere[near[0]]
            hints[key] = f"{near[0]!r} (a {table} key)" if table.startswith("[") else f"top-level {near[0]!r}"
    said = (f": did you mean {hints[unknown[0]]}?" if len(unknown) == 1 else
            ": did you mean " + ", ".join(f"{h} for {k!r}" for k, h in hints.items()) + "?") if hints else ""
    raise InvalidArgumentError(f"config {where}: unknown keys {unknown}{said}{' Known' if said else '; known'}: "
                               f"{sorted(known)}",
                               unknown=unknown, suggestions=hints)


def _engine(data: dict) -> EngineConfig:
    import msgspec

    _refuse_unknown(data, EngineConfig.__struct_fields__, "[engine]")
    try:
        return msgspec.convert(data, EngineConfig)
    except msgspec.ValidationError as e:
        raise InvalidArgumentError(f"config [engine]: {e}") from None


def _as_text_hint(value, kind: type) -> str:
    """Why a number came as text: YAML 1.1 (PyYAML) reads an exponent without a dot or sign (1e-1, 6e2) as a string,
    and a leading zero with an 8 or 9 (08080) too (a leading zero means octal). A whole-number field is told the
    plain integer: found in review, it was told 1000.0 / 8080.0, which it then refused as no whole number."""
    if kind not in (int, float) or not isinstance(value, str):
        return ""
    if kind is int and value.strip().lstrip("+-").lower().startswith("0o"):  # YAML 1.1 has no 0o prefix: text
        try:
            return f". YAML reads {value} as text (YAML 1.1 has no 0o prefix): write {int(value, 8)}"
        except ValueError:
            return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    if kind is float and not math.isfinite(number):  # 1.0e-1 style says nothing to the text "inf"
        return f". {value} is text here, and this key takes a finite number"
    # A number both YAML and TOML read as one is text only in quotes: "YAML reads 60 as text" misled there
    # (a TOML file's `window_s = "60"`, a YAML file's '60').
    quoted = _PLAIN_NUMBER.fullmatch(value.strip()) is not None
    reads = f"{value} is in quotes, so text" if quoted else f"YAML reads {value} as text"
    if kind is float:
        return f". {reads}: write {number!r}" + (" without the quotes" if quoted else " (or 1.0e-1 style, with a dot)")
    digits = value.strip().lstrip("+-")
    why = " (a leading 0 means octal to YAML, and 8 and 9 are no octal digits)" if (
        len(digits) > 1 and digits.startswith("0") and digits.isdigit()) else ""
    if not math.isfinite(number) or number != int(number):
        return f". {reads}{why}: this key takes a whole number, written without a dot or exponent"
    return f". {reads}{why}: write {int(number)}" + (" without the quotes" if quoted else "")


#: A decimal number YAML 1.1 and TOML both read as a number when unquoted: an integer without a leading 0, or one
#: with a dot (an exponent with a sign).
_PLAIN_NUMBER = re.compile(r"[-+]?(0|[1-9][0-9]*|[0-9]+\.[0-9]+([eE][-+][0-9]+)?)")


def _non_finite_text(value: str) -> bool:
    try:
        return not math.isfinite(float(value))
    except ValueError:
        return False


def _refuse_other_base(node, key) -> None:
    """Refuse an integer YAML 1.1 reads in a base other than 10, naming ``key`` (None: in a list) and the plain
    number: PyYAML reads a leading 0 as octal, and 0x, 0b and a:b (base 60) too (found in review: `port: 0700` gave
    448 and `max_queue: 0100` 64 silently, while 0800, no octal number, was refused with a hint)."""
    text = node.value
    digits = text.replace("_", "").lstrip("+-").lower()
    sign = "-" if text.lstrip().startswith("-") else ""
    where = f"{key if key is not None else 'a number'} at line {node.start_mark.line + 1}"
    if digits.startswith(("0x", "0b")):
        number = int(sign + digits, 0)
        base = "hexadecimal" if digits[1] == "x" else "binary"
        raise InvalidArgumentError(f"{where}: YAML reads {text} as {base}, {number}: write {number} (the config "
                                   f"takes plain decimal numbers; quote it if it is text)", key=key, value=text,
                                   line=node.start_mark.line + 1)
    if ":" in digits:
        number = 0
        for part in digits.split(":"):
            number = number * 60 + int(part)
        number = -number if sign else number
        raise InvalidArgumentError(f"{where}: YAML reads {text} as base 60 (a:b means a x 60 + b), {number}: write "
                                   f"{number}, or quote it if it is text", key=key, value=text,
                                   line=node.start_mark.line + 1)
    if len(digits) > 1 and digits.startswith("0"):
        octal, plain = int(sign + digits, 8), int(sign + digits, 10)
        raise InvalidArgumentError(f"{where}: YAML reads {text} as octal, {octal} (a leading 0 means octal to "
                                   f"YAML): write {plain}, {octal} if octal was meant, or '{text}' in quotes if it "
                                   f"is text", key=key, value=text, line=node.start_mark.line + 1)


def _yaml_loader():
    """PyYAML's SafeLoader, but a key given twice in one table is refused: PyYAML keeps the last one silently
    (found in review: a second `server:` block, appended at the end of a file, dropped the first's api_key; TOML
    refuses the same file). A merge key's (<<) entries overridden by the table's own are YAML's rule, not a repeat.
    An integer YAML reads in another base than 10 is refused (``_refuse_other_base``)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        INT_TAG = "tag:yaml.org,2002:int"

        def __init__(self, stream):
            super().__init__(stream)
            #: id(mapping node) -> (the node, its entries as written). flatten_mapping rewrites the entries of an
            #: anchored mapping used as a merge source in place, and the same node built again through an alias
            #: then held the merged-in key beside its own override (found in review: refused as a repeat).
            self.own_entries: dict[int, tuple] = {}

        def flatten_mapping(self, node):
            self.own_entries.setdefault(id(node), (node, list(node.value)))
            super().flatten_mapping(node)

        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen = {}
                for key_node, value_node in self.own_entries.get(id(node), (node, node.value))[1]:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=deep)
                    if value_node.tag == self.INT_TAG:  # here, where the key is known for the message
                        _refuse_other_base(value_node, key)
                    try:
                        first = seen.setdefault(key, key_node)
                    except TypeError:  # an unhashable key: SafeLoader's own error names it
                        break
                    if first is not key_node:  # two entries, on one line ({a: 1, a: 2}) or two
                        lines = (first.start_mark.line + 1, key_node.start_mark.line + 1)
                        raise InvalidArgumentError(
                            f"key {key!r} is given twice in one table, at line {lines[0]} and at line {lines[1]}: "
                            f"YAML would keep the second and drop the first unsaid. Fix: merge the two into one "
                            f"block", key=key, lines=lines)
            return super().construct_mapping(node, deep=deep)

        def construct_other_base_refused(self, node):  # an integer anywhere else: in a list, as a key
            _refuse_other_base(node, None)
            return self.construct_yaml_int(node)

    UniqueKeyLoader.add_constructor(UniqueKeyLoader.INT_TAG, UniqueKeyLoader.construct_other_base_refused)
    return UniqueKeyLoader


def _table(value, where: str) -> dict:
    """A table of the config (absent: empty); anything else is refused naming it, not fed to dict()."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"config {where} must be a table of keys, got {value!r}", key=where)
    return dict(value)


#: Bool, int and float fields of the policy, with their types (for refusing text where a number belongs).
_POLICY_KINDS = {f.name: type(f.default) for f in dataclasses.fields(PolicyConfig)
                 if type(f.default) in (bool, int, float)}


def _policy_table(value, where: str) -> PolicyConfig:
    table = _table(value, where)
    _refuse_unknown(table, {f.name for f in dataclasses.fields(PolicyConfig)}, where)
    for k, v in table.items():
        kind = _POLICY_KINDS.get(k)
        # Text where a number or true/false belongs is refused as _build refuses it in the other tables (found in
        # review: [policy] took window_s = "0.5" and prewarm = "no", which [controller] refuses, through the
        # command line's text parser). Text that reads as inf or nan goes on to the finite-number check below:
        # YAML has no plain inf (only .inf), and preempt_after_s takes "inf" as its "never".
        if kind is not None and isinstance(v, str) and not _non_finite_text(v):
            raise _wrong_type(where, k, v, kind)
        if not policy_number_ok(k, v):
            raise InvalidArgumentError(f"config {where}: {k} must be a finite number, got {v!r} ({POLICY_INF_HINT})",
                                       key=k)
    pc = policy_config_from_dict(table, where=where)
    check_policy_numbers(pc, f"config {where}", table)
    return pc


def _flatten(data, where: str = "config") -> dict:
    """The file's content as one table of top-level keys: a [cluster] table's keys join the top level (found in
    review: its models were dropped for the top level's empty list, and the demo models served instead); a
    lone string for ``models`` is a one-item list."""
    if not isinstance(data, dict):
        raise InvalidArgumentError(f"{where} must hold a table of keys (models, devices, [controller], [policy], "
                                   f"[engine], [server]), got {type(data).__name__} {data!r:.80}")
    data = dict(data)
    cluster = _table(data.pop("cluster", None), "[cluster]")
    both = sorted(set(cluster) & set(data))
    if both:
        raise InvalidArgumentError(f"config: {both} given both at the top level and in [cluster]; keep one",
                                   keys=both)
    data.update(cluster)
    if isinstance(data.get("models"), str):
        data["models"] = [data["models"]]
    return data


def cluster_config_from_dict(data: dict) -> ClusterConfig:
    """Build a ClusterConfig from the parsed content of a TOML or YAML file: top-level cluster keys (models,
    devices, cpu_workers, ...; or the same in a [cluster] table) and the tables controller, policy, engine and
    server. ``policy`` is either the policy's name (a string) or the [policy] table of PolicyConfig fields (then
    the name goes in [controller] policy)."""
    data = _flatten(data or {})
    models = []
    listed = data.pop("models", None)
    if listed is not None and not isinstance(listed, (list, tuple)):
        raise InvalidArgumentError(f"config: models must be a list of checkpoint paths or tables with a path, got "
                                   f"{listed!r}", key="models")
    for i, m in enumerate(listed or ()):
        if isinstance(m, str):
            models.append(ModelSpec(path=m))
        elif isinstance(m, dict) and isinstance(m.get("path"), str):
            models.append(_build(ModelSpec, dict(m), f"models[{i}]"))
        else:
            raise InvalidArgumentError(
                f"config: models[{i}] must be a checkpoint path or a table with a path (path = \"/ckpt/m\", name, "
                f"tp, dtype), got {m!r}", key=f"models[{i}]")
    ctl = _table(data.pop("controller", None), "[controller]")
    if "policy_config" in ctl:
        ctl["policy_config"] = _policy_table(ctl["policy_config"], "[controller] policy_config")
    if "policy" in data and data["policy"] is None:  # YAML's `policy:` with its keys commented out: an empty table
        data["policy"] = {}
    if isinstance(data.get("policy"), dict):
        if "policy_config" in ctl:
            raise InvalidArgumentError("config: the policy's knobs are given both as [policy] and as [controller] "
                                       "policy_config; keep the [policy] table", key="policy")
        ctl["policy_config"] = _policy_table(data.pop("policy"), "[policy]")
    elif "policy" in data:
        # Found in review: a top-level policy name silently overrode [controller] policy.
        if "policy" in ctl:
            raise InvalidArgumentError(f"config: the policy is named twice, policy = {data['policy']!r} at the top "
                                       f"level and {ctl['policy']!r} in [controller]; keep [controller] policy",
                                       key="policy")
        ctl["policy"] = data.pop("policy")
    controller = _build(ControllerConfig, ctl, "[controller]")
    engine = _engine(_table(data.pop("engine", None), "[engine]"))
    server = _build(ServerConfig, _table(data.pop("server", None), "[server]"), "[server]")
    data.update(models=tuple(models), controller=controller, engine=engine, server=server)
    return _build(ClusterConfig, data, "top level")


def load_config(path: str) -> ClusterConfig:
    """Read a cluster configuration file: TOML (.toml) or YAML (.yaml/.yml). An empty file, or one of comments only,
    gives the defaults, ``ClusterConfig()``."""
    return cluster_config_from_dict(read_config_file(path))


def _config_text(path: str, kind: str) -> str:
    """The file's text: UTF-8, a leading byte-order mark (Windows editors write one) dropped. Found in review: a
    BOM'd TOML was refused as "Invalid statement (at line 1, column 1)" where the same YAML loaded, and a UTF-16 or
    Latin-1 file failed with a bare codec message naming no file."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:  # unreadable (permissions), or gone since read_config_file looked
        raise InvalidArgumentError(f"config file {path!r} cannot be read: {e.strerror or e}. Fix: make it readable "
                                   f"by this user (e.g. `chmod a+r {path}`), or pass another --config",
                                   path=path, errno=e.errno) from None
    bom = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    try:
        return raw[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        utf16, at = raw[:2] in (b"\xff\xfe", b"\xfe\xff"), bom + e.start
        raise InvalidArgumentError(
            f"config file {path!r} is {'UTF-16' if utf16 else 'not UTF-8'} text (byte {raw[at]:#04x} at "
            f"offset {at} is no UTF-8): a {kind} config must be UTF-8. Fix: save it as UTF-8, e.g. "
            f"`iconv -f {'UTF-16' if utf16 else 'LATIN1'} -t UTF-8 OLD > NEW`"
            f"{'' if utf16 else ' for a Latin-1 file'}",
            path=path, encoding="utf-8") from None


def _check_path(path) -> str:
    """``path`` as a string, refused (typed, naming it) unless it is a file: a directory or a missing path was a
    bare FileNotFoundError saying a directory "does not exist" (found in review)."""
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgumentError(f"config file must be a path, got {type(path).__name__} {path!r:.80}",
                                   path=repr(path))
    path = os.fspath(path)
    if os.path.isdir(path):
        raise InvalidArgumentError(f"config file {path!r} is a directory: pass the .toml or .yaml file in it, e.g. "
                                   f"--config {os.path.join(path, 'warmserve.toml')}", path=path)
    if not os.path.exists(path):
        full = os.path.abspath(path)
        said = "" if os.path.isdir(os.path.dirname(full)) else f"; nor does its directory {os.path.dirname(full)!r}"
        raise InvalidArgumentError(f"config file {path!r} does not exist{'' if path == full else f' ({full})'}"
                                   f"{said}. Fix: check the path, or leave --config out for the defaults", path=path)
    if not os.path.isfile(path):
        raise InvalidArgumentError(f"config file {path!r} is not a regular file: pass a .toml or .yaml file",
                                   path=path)
    return path


def _syntax_error(path: str, kind: str, text: str, line: int | None, column: int | None, problem: str,
                  context: str = "") -> InvalidArgumentError:
    """The typed error for a TOML or YAML syntax error at ``line``, ``column`` (1-based; None: unknown), quoting
    the line with a caret under the column."""
    if line is None:
        return InvalidArgumentError(f"config file {path!r} is not valid {kind}: {problem}{context}", path=path)
    lines = text.splitlines()
    quoted = (f"\n    {lines[line - 1]}\n    {' ' * ((column or 1) - 1)}^" if 0 < line <= len(lines) else "")
    return InvalidArgumentError(
        f"config file {path!r}, line {line}, column {column}: not valid {kind}: {problem}{context}{quoted}\nFix: "
        f"correct the {kind} there (an unclosed bracket or quote on a line before shows where it ends)",
        path=path, line=line, column=column)


def _toml_error(path: str, text: str, e) -> InvalidArgumentError:
    # Python 3.11's TOMLDecodeError has the position only in its message: "Invalid value (at line 2, column 5)"
    at = re.search(r"\s*\(at line (\d+), column (\d+)\)$", str(e))
    if at is None:
        return _syntax_error(path, "TOML", text, None, None, str(e))
    return _syntax_error(path, "TOML", text, int(at[1]), int(at[2]), str(e)[:at.start()])


def _yaml_error(path: str, text: str, e) -> InvalidArgumentError:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    if mark is not None:
        context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
        said = (f" ({context}" + (f" at line {start.line + 1}, column {start.column + 1})" if start else ")")
                if context and mark is not start else "")
        return _syntax_error(path, "YAML", text, mark.line + 1, mark.column + 1,
                             getattr(e, "problem", None) or context or str(e), said)
    position = getattr(e, "position", None)  # a ReaderError (a control character): an offset into the text
    if isinstance(position, int):
        line = text.count("\n", 0, position) + 1
        return _syntax_error(path, "YAML", text, line, position - (text.rfind("\n", 0, position) + 1) + 1,
                             f"{getattr(e, 'reason', e)} (character {getattr(e, 'character', '?')!r})")
    return _syntax_error(path, "YAML", text, None, None, str(e))


def read_config_file(path: str) -> dict:
    """A config file's content as ``cluster_config_from_dict`` takes it: its top-level keys (a [cluster] table's
    among them), relative paths made relative to the file. An empty file, or one of comments only, is a config
    of all defaults (an empty table), as a table with its keys commented out is. A path that is no readable file,
    or text that is no TOML/YAML (the line and column named), is an InvalidArgumentError naming the path."""
    path = _check_path(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".toml":
        import tomllib

        text = _config_text(path, "TOML")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise _toml_error(path, text, e) from None
    elif ext in (".yaml", ".yml"):
        import yaml

        text = _config_text(path, "YAML")
        try:
            data = yaml.load(text, Loader=_yaml_loader())
        except yaml.YAMLError as e:
            raise _yaml_error(path, text, e) from None
        except InvalidArgumentError as e:  # a repeated key (_yaml_loader)
            raise InvalidArgumentError(f"config file {path!r}: {e.message}", path=path, **e.fields) from None
        data = {} if data is None else data
    else:
        raise InvalidArgumentError(f"config file {path!r}: use a .toml, .yaml or .yml file", path=path)
    data = _flatten(data, f"config file {path!r}")
    base = os.path.dirname(os.path.abspath(path))

    def here(p):  # relative paths are relative to the config file, not to wherever the server starts
        return os.path.join(base, p) if isinstance(p, str) and p and not os.path.isabs(os.path.expanduser(p)) else p

    def model(m):  # a repo id with no folder of its name beside the file: the Hugging Face cache's (hf_cache.py)
        p, spec = (m.get("path"), m) if isinstance(m, dict) else (m, {})
        if isinstance(p, str) and p:
            from warmserve.hf_cache import snapshot_for

            snapshot = snapshot_for(p, here(p))
            if snapshot is not None:
                return {**spec, "path": snapshot, "name": spec.get("name") or p}
        return dict(m, path=here(p)) if isinstance(m, dict) and "path" in m else here(m)

    if isinstance(data.get("models"), list):
        data["models"] = [model(m) for m in data["models"]]
    if "host_cache_dir" in data:
        data["host_cache_dir"] = here(data["host_cache_dir"])
    if isinstance(data.get("controller"), dict):
        data["controller"] = dict(data["controller"])
        for key in ("history_path", "history_record_path", "curve_dir"):
            if key in data["controller"]:
                data["controller"][key] = here(data["controller"][key])
    return data


def policy_table_keys(data: dict) -> dict[str, str]:
    """The policy options a config's content (``read_config_file``) sets, each with where: the [policy] table's,
    or [controller] policy_config's."""
    ctl = data.get("controller")
    for table, where in ((data.get("policy"), "[policy]"),
                         (ctl.get("policy_config") if isinstance(ctl, dict) else None, "[controller] policy_config")):
        if isinstance(table, dict):
            return {str(k): where for k in table}
    return {}
