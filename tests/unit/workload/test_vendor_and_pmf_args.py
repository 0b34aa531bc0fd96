"""Argument errors found in review: `python -m warmserve.workload.vendor` without its folder raised an IndexError,
and servegen_workload for a ServeGen model without token-length PMFs (mm-image) raised a plain ValueError naming
no argument."""

from __future__ import annotations

import subprocess
import sys

import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.workload import servegen_workload
from warmserve.workload.vendor import main


def test_vendor_without_a_folder_prints_its_usage_and_exits_2(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "python -m warmserve.workload.vendor" in err


def test_vendor_as_a_module_exits_2_without_a_traceback():
    r = subprocess.run([sys.executable, "-m", "warmserve.workload.vendor"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "usage:" in r.stderr, r.stderr


def test_a_servegen_model_without_length_pmfs_is_refused_naming_models():
    # mm-image has client windows (day 0) but no input/output token PMFs in the vendored extract
    with pytest.raises(InvalidArgumentError, match="models") as e:
        servegen_workload(2, models=("mm-image",), duration_s=600, history_days=0, start_s=40000)
    assert "mm-image" in str(e.value) and "pmf_path" in str(e.value)
