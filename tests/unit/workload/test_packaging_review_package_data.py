"""The vendored traces the code opens by name are in the wheel and the sdist, checked without building either.

Found in the packaging review (2026-12-07): `warmserve simulate --preset paper-code` and `warmserve bench forecast`
ran from a wheel installed in a fresh venv, away from the checkout, only because every file they name is under
python/warmserve/data (shipped whole by ``wheel.packages``) and none is git-ignored (scikit-build-core leaves
ignored files out of both). A name the code opens with no file behind it, or a data file a new .gitignore rule
hides, breaks an installed copy while every test run from the checkout still finds the file: fail here instead.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tomllib

import pytest

from warmserve.workload.data import DATA_DIR

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PACKAGE = os.path.join(ROOT, "python", "warmserve")

# data_path("name") and data_path(f"...{kind}...") in the package's code; a {field} stands for any text.
NAMED = re.compile(r"""data_path\(\s*f?["']([^"']+)["']""")


def _named_files() -> dict[str, str]:
    """{pattern: first source file naming it} for every data file the package's code opens by name."""
    names: dict[str, str] = {}
    for path in sorted(glob.glob(os.path.join(PACKAGE, "**", "*.py"), recursive=True)):
        with open(path, encoding="utf-8") as f:
            for name in NAMED.findall(f.read()):
                names.setdefault(re.sub(r"\{[^}]*\}", "*", name), os.path.relpath(path, ROOT))
    return names


def test_the_code_names_the_vendored_traces():
    names = _named_files()
    assert len(names) >= 5, names  # the two Azure kinds (one pattern) and the four ServeGen files


@pytest.mark.parametrize("folder", [os.path.join(PACKAGE, "data"), DATA_DIR], ids=["source", "imported"])
def test_every_named_data_file_is_in_the_package_data_folder(folder):
    """In the source tree, and in the copy imported: CI installs a wheel (`pip install ".[test]"`), so there it is
    the installed package's data folder."""
    missing = {pattern: where for pattern, where in _named_files().items()
               if not glob.glob(os.path.join(folder, pattern))}
    assert not missing, f"named in the code, absent from {folder}: {missing}"


def test_the_wheel_and_sdist_rules_take_the_data_folder():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        skb = tomllib.load(f)["tool"]["scikit-build"]
    assert "python/warmserve" in skb["wheel"]["packages"]
    for rule in skb["wheel"].get("exclude", []) + skb.get("sdist", {}).get("exclude", []):
        assert "data" not in rule and not rule.endswith((".gz", ".csv")), rule


def test_no_data_file_is_git_ignored():
    """scikit-build-core builds the sdist and the wheel's package files from what the tree's .gitignore files leave
    (not this user's global excludes, hence core.excludesFile=/dev/null)."""
    if shutil.which("git") is None or not os.path.exists(os.path.join(ROOT, ".git")):
        pytest.skip("not a git checkout")
    files = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(PACKAGE, "data", "*")))
    assert files
    r = subprocess.run(["git", "-C", ROOT, "-c", "core.excludesFile=/dev/null", "check-ignore", "--no-index", "-v",
                        *files],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, f"git-ignored, so left out of the wheel and sdist: {r.stdout}{r.stderr}"
