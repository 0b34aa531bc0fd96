"""An empty output path ('', an unset variable in --json "$OUT") is refused, not taken as "no output". Found in
review: `calibrate --out ''` measured for a minute and then failed with IsADirectoryError; `simulate --json ''`,
`--plot ''`, `bench placement --json ''` and `bench switch --json '' --plot ''` exited 0 having written nothing.
None (the flag left out) still means no output. The command lines are in test_cli_errors.py's CLI_MISTAKES."""

from __future__ import annotations

import pytest

from warmserve.errors import InvalidArgumentError
from warmserve.outputs import check_output, check_output_folder, check_plot


@pytest.mark.parametrize("check", [check_output, check_output_folder, check_plot])
def test_an_empty_path_is_refused_naming_the_flag(check):
    with pytest.raises(InvalidArgumentError, match=r"^--json '': names no path") as e:
        check("--json", "")
    assert e.value.fields["flag"] == "--json"


@pytest.mark.parametrize("check", [check_output, check_output_folder, check_plot])
def test_none_is_still_no_output(check):
    assert check("--json", None) is None
