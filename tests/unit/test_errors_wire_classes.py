"""An error a worker raises reaches its client as the worker's own class, whatever the client imported. Found in
review: ``TensorParallelError`` (and ``UnsupportedModelError``, registered in worker-side modules) came back as a
plain WarmServeError to a process that had not imported those modules, so ``except TensorParallelError`` missed
it."""

import ast
import pathlib
import subprocess
import sys

from warmserve import errors

PACKAGE = pathlib.Path(errors.__file__).resolve().parent


def _registered_elsewhere() -> dict[str, str]:
    """Class name -> module of every ``@register``-decorated class outside errors.py."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "errors.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                    getattr(d, "id", getattr(d, "attr", None)) == "register" for d in node.decorator_list):
                rel = path.relative_to(PACKAGE.parent).with_suffix("")
                out[node.name] = ".".join(rel.parts)
    return out


def test_every_error_registered_outside_errors_py_is_found_by_from_wire():
    found = _registered_elsewhere()
    assert "TensorParallelError" in found and "UnsupportedModelError" in found, found
    assert errors._DEFINED_IN == found, "errors._DEFINED_IN must name each registered class's module"


def test_a_fresh_process_decodes_a_worker_side_error_as_its_own_class():
    code = """
import sys
from warmserve import errors
assert "warmserve.engine.parallel" not in sys.modules
for name in ("TensorParallelError", "UnsupportedModelError", "CheckpointError", "RanksDivergedError"):
    e = errors.from_wire({"type": name, "message": "tp=4 does not divide 6 heads", "fields": {"model": "m"}})
    assert type(e).__name__ == name, (name, type(e))
    assert str(e) == "tp=4 does not divide 6 heads" and e.fields["model"] == "m"
assert "torch" not in sys.modules, "decoding an error imported torch (a controller does not carry it)"
from warmserve.engine.parallel import TensorParallelError
from warmserve.engine.arch import UnsupportedModelError
e = errors.from_wire({"type": "TensorParallelError", "message": "x"})
assert isinstance(e, TensorParallelError) and isinstance(e, UnsupportedModelError) and isinstance(e, ValueError)
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
