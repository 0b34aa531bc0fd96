"""The history record is UTF-8 whatever the locale, as ``read_history`` reads it. Found in the locale review:
written in the locale's encoding, a record with a Latin-1 model name under a Latin-1 locale was refused at the next
start ("not UTF-8 text"), and one with a name the locale cannot encode was never written. The child runs in the C
locale with Python's UTF-8 mode and locale coercion off, an ASCII locale every machine has, standing in for a
Latin-1 one; before the fix its write failed (UnicodeEncodeError) and no file was made."""

from __future__ import annotations

import json
import os
import subprocess
import sys

CHILD = """
import json, locale, sys, time
from warmserve.controller.history_file import read_history
from warmserve.controller.history_record import HistoryRecord
rec = HistoryRecord(sys.argv[1], origin_unix_s=time.time() - 3600.0)
for i, name in enumerate(json.loads(sys.argv[2])):
    rec.window(name, 300.0 * i, 1.5 + i, 2.0 + i)
rec.close()
avg = {m: a.tolist() for m, (_, a, _) in read_history(sys.argv[1]).items()}
print(json.dumps([locale.getpreferredencoding(False), avg]))
"""


def test_a_record_with_names_the_locale_cannot_encode_is_written_in_utf8_and_read_back(tmp_path):
    path = str(tmp_path / "history.csv")
    names = ["org/ll\u00e4m\u00e4", "\u6a21\u578b-7b", "plain"]
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    r = subprocess.run([sys.executable, "-c", CHILD, path, json.dumps(names)], env=env, capture_output=True,
                       text=True, encoding="utf-8", timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    encoding, avg = json.loads(r.stdout)
    assert encoding in ("ANSI_X3.4-1968", "ascii", "US-ASCII"), encoding  # the child's locale is really not UTF-8
    assert avg == {"org/ll\u00e4m\u00e4": [1.5], "\u6a21\u578b-7b": [2.5], "plain": [3.5]}
    with open(path, encoding="utf-8") as f:
        assert "\u6a21\u578b-7b" in f.read()
