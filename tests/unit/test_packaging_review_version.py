"""The version a user sees: pyproject.toml's (the installed metadata, `warmserve --version`, `pip show`) and
``warmserve.__version__`` (a literal in __init__.py, read by the Python API) are written in two places.

Found in the packaging review (2026-12-07): they agree (0.1.0), but nothing kept them so; a bump of one alone would
have `warmserve --version` and ``warmserve.__version__`` disagree in the same install.
"""

from __future__ import annotations

import os
import tomllib

import warmserve
from warmserve import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_pyproject_and_dunder_version_agree():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        declared = tomllib.load(f)["project"]["version"]
    assert warmserve.__version__ == declared


def test_the_cli_version_is_the_package_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"warmserve {warmserve.__version__}"
