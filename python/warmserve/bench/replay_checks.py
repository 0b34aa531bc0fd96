"""Checks of `warmserve bench replay`'s command line that ``replay_setup.check_args`` runs before anything is built
or launched: the --policy list, and the --reuse-live file read and shape-checked. Each raises InvalidArgumentError
naming the flag and the fix, one line, which the CLI turns into exit status 2."""

from __future__ import annotations

import json

from warmserve.errors import InvalidArgumentError

#: what the run reads of each policy's live results in a --reuse-live file (``replay._main``), with their JSON kinds
POLICY_FIELDS = {"requests": int, "answered": int, "ttft_p50_s": (int, float), "ttft_p99_s": (int, float),
                 "outcomes": dict}


def policy_names(text: str) -> list[str]:
    """--policy as a list of names, by `warmserve simulate`'s rule (``sim.cli_checks.parse_policies``) in this
    command's words. Found in review: `--policy ","` ran nothing, printed an empty table and exited 0;
    `--policy warmserve,warmserve` ran the whole live replay twice, minutes each, and kept the second result only."""
    from warmserve.sim.cli_checks import parse_policies

    return parse_policies(text, "e.g. --policy warmserve (with --endpoint the run's label, e.g. --policy vllm), or "
                          "leave --policy out", ": each name is a whole live replay, and a second one would replace "
                          "the first's results")


def _kind(x) -> str:
    """A JSON value's kind, as a message names it."""
    if isinstance(x, bool):
        return "a boolean"
    return {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
            type(None): "null"}.get(type(x), type(x).__name__)


def _is(x, kinds) -> bool:
    """``x`` of one of the ``kinds``, where JSON's true/false is no number."""
    return isinstance(x, kinds) and not isinstance(x, bool)


def read_reuse_live(path: str) -> dict:
    """The --json document of an earlier `bench replay` run, read from ``path`` and checked to hold what this run
    reads of it: an object whose "policies" maps each policy to its live results (``POLICY_FIELDS``, a "warmup"
    object with its "outcomes" where there is one), and "args", "workload" and "ttft_s" objects (or null; null
    "ttft_s", as older runs wrote it, is read as no TTFTs). Found in review: the file was opened only after the
    workload was built and unchecked, so a missing one exited 1 with a bare FileNotFoundError, a non-JSON one with a
    JSONDecodeError naming neither flag nor file, and `[1,2]` / `{"policies": 5}` ended in tracebacks."""
    def refuse(what: str):
        return InvalidArgumentError(f"--reuse-live {path} {what}: give the --json file of an earlier `warmserve "
                                    f"bench replay` run of the same workload", flag="--reuse-live", path=path)

    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except OSError as e:
        raise refuse(f"cannot be read ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise refuse(f"is not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except ValueError as e:  # bytes that are no UTF-8 / UTF-16 / UTF-32 text
        raise refuse(f"is not JSON text ({e})") from None
    if not isinstance(doc, dict):
        raise refuse(f"holds {_kind(doc)}, not an object with the live results under \"policies\"")
    if "policies" not in doc:
        raise refuse("holds no \"policies\" (the live results per policy)")
    policies = doc["policies"]
    if not isinstance(policies, dict):
        raise refuse(f"is no replay's results: \"policies\" is {_kind(policies)}, not an object of policies")
    for p, s in policies.items():
        if not isinstance(s, dict):
            raise refuse(f"is no replay's results: \"policies\"[{json.dumps(p)}] is {_kind(s)}, not an object")
        missing = [k for k in POLICY_FIELDS if k not in s]
        if missing:
            raise refuse(f"is no replay's results: \"policies\"[{json.dumps(p)}] lacks {', '.join(missing)}")
        bad = [f"\"{k}\" is {_kind(s[k])}" for k, kinds in POLICY_FIELDS.items() if not _is(s[k], kinds)]
        warm = s.get("warmup")
        if "warmup" in s and not (isinstance(warm, dict) and isinstance(warm.get("outcomes"), dict)):
            bad.append(f"\"warmup\" is {_kind(warm)} without an \"outcomes\" object")
        if bad:
            raise refuse(f"is no replay's results: in \"policies\"[{json.dumps(p)}], {'; '.join(bad)}")
    for k in ("args", "workload", "ttft_s"):
        if doc.get(k) is not None and not isinstance(doc[k], dict):
            raise refuse(f"is no replay's results: \"{k}\" is {_kind(doc[k])}, not an object")
    for p, x in (doc.get("ttft_s") or {}).items():
        if not isinstance(x, list) or not all(_is(v, (int, float)) for v in x):
            raise refuse(f"is no replay's results: \"ttft_s\"[{json.dumps(p)}] is not an array of seconds")
    return {**doc, "ttft_s": doc.get("ttft_s") or {}}
