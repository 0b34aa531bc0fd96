"""A checkpoint's model.safetensors.index.json is read as UTF-8 (RFC 8259) whatever the locale. Found in the locale
review: read in the locale's encoding, an index whose metadata holds a non-ASCII character (a tool that writes JSON
unescaped, an author's name) was refused as "not a JSON object with a weight_map" under an ASCII locale, and would
read wrongly under a multi-byte one (GBK, EUC-JP). The child runs in the C locale with Python's UTF-8 mode and
locale coercion off, a locale that is not UTF-8 on every machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

CHILD = """
import json, locale, sys
from warmserve.engine.safetensors_header import safetensors_files
print(json.dumps([locale.getpreferredencoding(False), [f.rsplit("/", 1)[1] for f in safetensors_files(sys.argv[1])]]))
"""


def test_an_index_with_utf8_metadata_is_read_under_an_ascii_locale(tmp_path):
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = {"metadata": {"total_size": 8, "note": "Zo\u00eb's \u6a21\u578b"},
             "weight_map": {"a.weight": shards[0], "b.weight": shards[1]}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index, ensure_ascii=False), encoding="utf-8")
    for shard in shards:
        (tmp_path / shard).write_bytes(b"")
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    r = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    encoding, files = json.loads(r.stdout)
    assert encoding in ("ANSI_X3.4-1968", "ascii", "US-ASCII"), encoding  # the child's locale is really not UTF-8
    assert files == shards
