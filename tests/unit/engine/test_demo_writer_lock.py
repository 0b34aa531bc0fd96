"""Two processes asking for the same demo checkpoint: the second waits for the first's writing and then takes its
files as they are, where it would delete the shards the first was writing (the test suite's parallel workers all
ask for the demo models of one home at start)."""

import os
import subprocess
import sys
import time

# DemoSpec is used by ``eval(SPEC)`` below, where ruff cannot see it.
from warmserve.engine.demo import DemoSpec, _fingerprint, _write_checkpoint, _writer_lock, config_dict  # noqa: F401

SPEC = "DemoSpec('llama', 64, 128, 2, 4, 2, vocab_size=256)"


def test_a_second_writer_waits_for_the_first_and_keeps_what_it_wrote(tmp_path):
    path = str(tmp_path / "tiny")
    other = [sys.executable, "-c",
             "import sys; from warmserve.engine.demo import DemoSpec, config_dict, write_checkpoint; "
             "print('imported', flush=True); "
             f"print(write_checkpoint(sys.argv[1], 'tiny', config_dict({SPEC})))", str(tmp_path)]
    with _writer_lock(path):  # this process is the first writer, mid-way
        proc = subprocess.Popen(other, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "imported", proc.communicate()
        time.sleep(3.0)  # a writer that did not wait would have written the whole checkpoint by now (~0.5 s)
        assert proc.poll() is None, proc.communicate()
        assert not os.path.exists(path)
        cfg = dict(config_dict(eval(SPEC)), torch_dtype="float32")  # as write_checkpoint passes it on
        _write_checkpoint(path, cfg, "float32", None, 1 << 30, None, os.path.join(path, ".warmserve-demo"),
                          _fingerprint(cfg, "float32"))
        shard = os.path.join(path, "model.safetensors")
        written = os.stat(shard)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.strip() == path
    after = os.stat(shard)
    assert (after.st_ino, after.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)  # taken, not rewritten
