"""Every Python script under bench/ compiles and imports against today's package, so that a figure a README cites
still comes from a command that runs. Nothing else in the suite runs most of them (found in review: 16 of 39 were
named in no test), and the package under them is refactored often: a script whose ``from warmserve... import X``
names something gone, or whose ``import warmserve.a.b as m`` then ``m.X`` does, fails only when someone reruns it.

One subprocess (a fresh interpreter: the scripts insert their own folders into sys.path and several share a name,
``tables.py`` in two folders) imports each script as a module, not as ``__main__``, so its ``main()`` does not
run. Its sibling modules are dropped from sys.modules and sys.path is restored between scripts. Then, because most
scripts import inside ``main()`` or a worker function (which an import does not reach), every ``from warmserve...``
and ``import warmserve...`` anywhere in the file is resolved, and every attribute read from a module alias bound by
``import warmserve.x as m``. A script with no ``__main__`` guard whose top level does more than define names runs
its benchmark on import (bench/switch/fill_populate_ab.py writes a 1 GiB file and fills /dev/shm): it is not
executed; its top-level imports alone run, and the names check covers the rest. No script needs a GPU to be
imported (gpu_graphs.py and gpu_kernels.py import torch and the kernels' module, which load on the CPU), so none is
skipped."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPTS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "bench").rglob("*.py")
                 if "__pycache__" not in p.parts)

#: The checker, run once in a subprocess over every script: prints {script: [problems]} as JSON.
CHECKER = textwrap.dedent(r'''
    import ast, importlib, importlib.util, io, json, os, sys, traceback
    from contextlib import redirect_stderr, redirect_stdout

    root, scripts = sys.argv[1], sys.argv[2:]
    # top-level statements that only define things; in a script with no __main__ guard anything else (a loop, a
    # with, a bare call) is its benchmark, run at import
    DEFINES = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign,
               ast.AnnAssign, ast.Try)

    def is_main_guard(node):
        return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
                and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")

    def runs_at_import(tree):
        if any(is_main_guard(node) for node in tree.body):
            return False  # written to be imported (a top-level sys.path.insert, as rerun_policies.py has, is set-up)
        for i, node in enumerate(tree.body):
            if isinstance(node, DEFINES) or is_main_guard(node):
                continue
            if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                continue  # the docstring
            return True
        return False

    def names_problems(tree):
        out, aliases = [], {}
        for node in ast.walk(tree):
            top = (getattr(node, "module", None) or "").split(".")[0]
            if isinstance(node, ast.ImportFrom) and node.level == 0 and top == "warmserve":
                try:
                    mod = importlib.import_module(node.module)
                except Exception as e:
                    out.append(f"line {node.lineno}: from {node.module} import ...: {type(e).__name__}: {e}")
                    continue
                for a in node.names:
                    if a.name != "*" and not hasattr(mod, a.name):
                        try:  # a submodule not yet imported by its package
                            importlib.import_module(f"{node.module}.{a.name}")
                        except ImportError:
                            out.append(f"line {node.lineno}: {node.module} has no {a.name!r}")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] != "warmserve":
                        continue
                    try:
                        mod = importlib.import_module(a.name)
                    except Exception as e:
                        out.append(f"line {node.lineno}: import {a.name}: {type(e).__name__}: {e}")
                        continue
                    if a.asname:
                        aliases[a.asname] = mod
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and not hasattr(aliases[node.value.id], node.attr)):
                out.append(f"line {node.lineno}: {node.value.id}.{node.attr}: "
                           f"{aliases[node.value.id].__name__} has no {node.attr!r}")
        return out

    result = {}
    for rel in scripts:
        path = os.path.join(root, rel)
        problems = []
        try:
            src = open(path, encoding="utf-8").read()
            tree = ast.parse(src, rel)
            compile(src, rel, "exec")
        except SyntaxError as e:
            result[rel] = [f"does not compile: {e}"]
            continue
        before_modules, before_path = set(sys.modules), list(sys.path)
        sys.path.insert(0, os.path.dirname(path))
        name = "bench_script_" + rel[:-3].replace("/", "_")  # not "__main__": main() stays unrun
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # as an import does (a dataclass looks its module up there)
        try:
            with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
                if runs_at_import(tree):  # its top-level imports alone
                    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
                    exec(compile(ast.Module(body=imports, type_ignores=[]), path, "exec"), module.__dict__)
                else:
                    spec.loader.exec_module(module)
        except BaseException as e:
            problems.append("import: " + "".join(traceback.format_exception_only(type(e), e)).strip())
        problems += names_problems(tree)
        for mod_name in set(sys.modules) - before_modules:  # the script and its siblings (tables, ...)
            f = getattr(sys.modules[mod_name], "__file__", None) or ""
            if os.path.abspath(f).startswith(os.path.join(root, "bench") + os.sep):
                del sys.modules[mod_name]
        sys.path[:] = before_path
        result[rel] = problems
    print(json.dumps(result))
''')


@pytest.fixture(scope="module")
def problems() -> dict[str, list[str]]:
    r = subprocess.run([sys.executable, "-B", "-c", CHECKER, str(ROOT), *SCRIPTS], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, f"the checker failed:\n{r.stderr[-3000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_the_scripts_are_found():
    assert len(SCRIPTS) >= 30 and "bench/simulate/table_of.py" in SCRIPTS and "bench/worker_start/run.py" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_bench_script_compiles_and_imports_against_todays_package(problems, script):
    assert script in problems, f"{script}: not checked"
    assert not problems[script], f"{script}:\n  " + "\n  ".join(problems[script])
