"""The config file: TOML or YAML read into the one ``ClusterConfig`` tree of ``config.py``.

``read_config_file`` reads the text (relative paths made relative to the file), ``cluster_config_from_dict``
builds and checks the tree, ``load_config`` is both; ``warmserve serve --config`` reads its file with them.
"""

from __future__ import annotations

import dataclasses
import math
import os

from warmserve.config import (POLICY_INF_HINT, ClusterConfig, ControllerConfig, ModelSpec, ServerConfig,
                              check_policy_numbers, policy_number_ok)
from warmserve.errors import InvalidArgumentError
from warmserve.policy.config import PolicyConfig, policy_config_from_dict
from warmserve.protocol import EngineConfig


def _build(cls, data: dict, where: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise InvalidArgumentError(f"config {where}: unknown keys {sorted(unknown)}; known: {sorted(fields)}",
                                   unknown=sorted(unknown))
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
            what = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}[kind]
            raise InvalidArgumentError(f"config {where}: {k} must be {what}, got {v!r}{_as_text_hint(v, kind)}", key=k)
        if kind is float and not math.isfinite(v):
            raise InvalidArgumentError(f"config {where}: {k} must be a finite number, got {v!r}", key=k)
        out[k] = v
    return cls(**out)


def _engine(data: dict) -> EngineConfig:
    import msgspec

    known = set(EngineConfig.__struct_fields__)
    unknown = set(data) - known
    if unknown:
        raise InvalidArgumentError(f"config [engine]: unknown keys {sorted(unknown)}; known: {sorted(known)}",
                                   unknown=sorted(unknown))
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
    if kind is float:
        return f". YAML reads {value} as text: write {number!r} (or 1.0e-1 style, with a dot)"
    digits = value.strip().lstrip("+-")
    why = " (a leading 0 means octal to YAML, and 8 and 9 are no octal digits)" if (
        len(digits) > 1 and digits.startswith("0") and digits.isdigit()) else ""
    if not math.isfinite(number) or number != int(number):
        return f". YAML reads {value} as text{why}: this key takes a whole number, written without a dot or exponent"
    return f". YAML reads {value} as text{why}: write {int(number)}"


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
                                   f"YAML): write {plain}, {octal} if octal was meant, or '{text}' in quotes if it is text", key=key, value=text,
                                   line=node.start_mark.line + 1)


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


def _policy_table(value, where: str) -> PolicyConfig:
    table = _table(value, where)
    for k, v in table.items():
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
    """Read a cluster configuration file: TOML (.toml) or YAML (.yaml/.yml)."""
    return cluster_config_from_dict(read_config_file(path))


def _config_text(path: str, kind: str) -> str:
    """The file's text: UTF-8, a leading byte-order mark (Windows editors write one) dropped. Found in review: a
    BOM'd TOML was refused as "Invalid statement (at line 1, column 1)" where the same YAML loaded, and a UTF-16 or
    Latin-1 file failed with a bare codec message naming no file."""
    with open(path, "rb") as f:
        raw = f.read()
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


def read_config_file(path: str) -> dict:
    """A config file's content as ``cluster_config_from_dict`` takes it: its top-level keys (a [cluster] table's
    among them), relative paths made relative to the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".toml":
        import tomllib

        try:
            data = tomllib.loads(_config_text(path, "TOML"))
        except tomllib.TOMLDecodeError as e:
            raise InvalidArgumentError(f"config file {path!r} is not valid TOML: {e}", path=path) from None
    elif ext in (".yaml", ".yml"):
        import yaml

        text = _config_text(path, "YAML")
        try:
            data = yaml.load(text, Loader=_yaml_loader())
        except yaml.YAMLError as e:
            raise InvalidArgumentError(f"config file {path!r} is not valid YAML: {e}", path=path) from None
        except InvalidArgumentError as e:  # a repeated key (_yaml_loader)
            raise InvalidArgumentError(f"config file {path!r}: {e.message}", path=path, **e.fields) from None
        data = {} if data is None else data
    else:
        raise InvalidArgumentError(f"config file {path!r}: use a .toml, .yaml or .yml file", path=path)
    data = _flatten(data, f"config file {path!r}")
    base = os.path.dirname(os.path.abspath(path))

    def here(p):  # relative paths are relative to the config file, not to wherever the server starts
        return os.path.join(base, p) if isinstance(p, str) and p and not os.path.isabs(os.path.expanduser(p)) else p

    if isinstance(data.get("models"), list):
        data["models"] = [dict(m, path=here(m["path"])) if isinstance(m, dict) and "path" in m else here(m)
                          for m in data["models"]]
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
