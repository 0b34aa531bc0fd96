"""Two deployments side by side recording their load into one file, found in review: two `warmserve serve` started
with the same `--history F --record-history F` each rewrote F with its own rows at every window's end, so the load
one measured was overwritten by the other's idle windows, unsaid (seen live: 3 busy windows of one server gone from
the file a second later). Now the record holds a lock beside the file for its life: a second one is refused, typed,
naming the holder's pid and the fix; a closed record (or a failed start) lets the next one in."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

import warmserve
from warmserve.config import ClusterConfig, ControllerConfig, ModelSpec
from warmserve.controller.history_record import HistoryRecord
from warmserve.engine.demo import DemoSpec, build_tokenizer, config_dict, write_checkpoint
from warmserve.errors import InvalidArgumentError
from warmserve.policy.config import PolicyConfig

#: Another process (the other deployment) holding a record of argv[1] until its stdin closes.
HOLDER = """
import sys
from warmserve.controller.history_record import HistoryRecord
rec = HistoryRecord(sys.argv[1], 0.0)
print("held", flush=True)
sys.stdin.read()
rec.close()
"""


def test_a_second_process_recording_into_the_same_file_is_refused_naming_the_first(tmp_path):
    path = str(tmp_path / "load.csv")
    other = subprocess.Popen([sys.executable, "-c", HOLDER, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        with pytest.raises(InvalidArgumentError) as e:
            HistoryRecord(path, 0.0)
        said = str(e.value)
        assert path in said and f"pid {other.pid}" in said and "--record-history" in said and "Fix:" in said, said
        assert e.value.fields["holder_pid"] == str(other.pid)
    finally:
        other.stdin.close()
        assert other.wait(timeout=30) == 0
    rec = HistoryRecord(path, 0.0)  # the other one closed: this one records now
    rec.window("m", 0.0, 1.0, 2.0)
    rec.close()
    assert open(path).read().splitlines()[1].startswith("m,0,1,2")
    HistoryRecord(path, 0.0).close()  # and again in this process once closed


def test_other_record_files_in_one_folder_do_not_collide(tmp_path):
    a, b = HistoryRecord(str(tmp_path / "a.csv"), 0.0), HistoryRecord(str(tmp_path / "b.csv"), 0.0)
    a.close()
    b.close()


def test_a_cluster_refused_before_its_workers_start_lets_go_of_its_record_file(tmp_path):
    """A start refused by a check made once the controller existed (weights too large for the workers' memory)
    never closed that controller: its record thread and lock stayed, and a retry in the same notebook was refused
    as 'another running warmserve'. The controller is now made after those checks."""
    path = write_checkpoint(str(tmp_path / "ck"), "tiny", config_dict(DemoSpec("llama", 64, 128, 1, 4, 2,
                                                                                vocab_size=256)),
                            tokenizer=build_tokenizer(256))
    record = str(tmp_path / "load.csv")
    cfg = ClusterConfig(models=(ModelSpec(path=path),), devices=("cpu:0",), cpu_worker_memory_bytes=2 << 20,
                        worker_start_timeout_s=60, controller=ControllerConfig(
                            history_record_path=record, policy_config=PolicyConfig(window_s=30)))
    t0 = time.monotonic()
    with pytest.raises(InvalidArgumentError) as e:
        warmserve.Cluster(None, config=cfg)
    assert "another running warmserve" not in str(e.value), e.value
    assert time.monotonic() - t0 < 10  # refused before any worker started
    HistoryRecord(record, 0.0).close()  # nothing holds the file now
