"""A config path that is no readable file is one typed error naming the path and the fix (found in review: a
directory was a bare FileNotFoundError saying it "does not exist", and an unreadable file a bare
PermissionError/IsADirectoryError traceback from open())."""

from __future__ import annotations

import errno

import pytest

from warmserve import config_file
from warmserve.config_file import load_config, read_config_file
from warmserve.errors import InvalidArgumentError


def test_a_directory_is_named_as_one_with_the_file_to_pass(tmp_path):
    d = tmp_path / "conf.toml"
    d.mkdir()
    for path in (str(d), d):  # a pathlib.Path too
        with pytest.raises(InvalidArgumentError, match=r"config file '.*conf.toml' is a directory: pass the \.toml "
                                                       r"or \.yaml file in it") as e:
            load_config(path)
        assert e.value.path == str(d)


def test_a_missing_file_and_a_missing_directory_are_named(tmp_path):
    with pytest.raises(InvalidArgumentError, match=r"'.*none\.yaml' does not exist\. Fix: check the path") as e:
        read_config_file(str(tmp_path / "none.yaml"))
    assert e.value.path == str(tmp_path / "none.yaml")
    with pytest.raises(InvalidArgumentError, match=r"does not exist; nor does its directory '.*nodir'"):
        load_config(str(tmp_path / "nodir" / "c.toml"))


def test_a_file_that_cannot_be_read_is_named_with_the_fix(tmp_path, monkeypatch):
    f = tmp_path / "c.toml"
    f.write_text("cpu_workers = 1\n")

    def refuse(*args, **kwargs):  # root reads any file: open() refusing it stands for the permissions
        raise PermissionError(errno.EACCES, "Permission denied", str(f))

    monkeypatch.setattr(config_file, "open", refuse, raising=False)
    with pytest.raises(InvalidArgumentError, match=r"config file '.*c\.toml' cannot be read: Permission denied\. "
                                                   r"Fix: make it readable") as e:
        load_config(str(f))
    assert (e.value.path, e.value.errno) == (str(f), errno.EACCES)


def test_a_path_that_is_no_regular_file_or_no_path_is_refused(tmp_path):
    with pytest.raises(InvalidArgumentError, match="is not a regular file"):
        load_config("/dev/null")
    with pytest.raises(InvalidArgumentError, match="config file must be a path, got int 3"):
        load_config(3)
