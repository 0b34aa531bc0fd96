"""Found in review: the Azure 2023 timestamps (zone-less strings) were parsed in the machine's local time zone, so
the trace's arrival times depended on TZ: a daylight-saving switch inside the trace's hour moved every later
request by an hour, and the float epoch seconds rounded the 100 ns fractions differently per zone. They are now
read as UTC whatever TZ says."""

import json
import os
import subprocess
import sys

import numpy as np

# Each zone is set in one child process with os.environ["TZ"] + time.tzset(), as a machine configured so would
# have it; the loader's cache is bypassed so every zone parses the file afresh.
CHILD = r"""
import json, os, sys, time
import numpy as np
from warmserve.workload import azure
from warmserve.workload.data import data_path
out, names = sys.argv[1], {}
for i, tz in enumerate(json.loads(sys.argv[2])):
    os.environ["TZ"] = tz
    time.tzset()
    names[tz] = list(time.tzname)
    for kind in azure.KINDS:
        path = data_path(f"azure2023_AzureLLMInferenceTrace_{kind}.csv.gz")
        np.save(os.path.join(out, f"{kind}-{i}.npy"), azure._load.__wrapped__(path, kind).arrival_s)
json.dump(names, open(os.path.join(out, "names.json"), "w"))
"""

# America/New_York; and a zone whose daylight saving ends at 18:45 on 2023-11-16 (day 320), inside both traces'
# hour (18:15-19:14), as a POSIX rule that needs no tz database
ZONES = ["UTC", "America/New_York", "XST3XDT,J1/0,J320/18:45"]


def test_azure_arrivals_do_not_depend_on_the_machines_time_zone(tmp_path):
    subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), json.dumps(ZONES)], check=True, timeout=120,
                   env=dict(os.environ))
    names = json.load(open(tmp_path / "names.json"))
    assert names["XST3XDT,J1/0,J320/18:45"] == ["XST", "XDT"]  # the rule took effect: the test is not vacuous
    for kind in ("code", "conv"):
        utc = np.load(tmp_path / f"{kind}-0.npy")
        assert utc[0] == 0 and np.all(np.diff(utc) >= 0) and utc[-1] < 3600
        for i, tz in enumerate(ZONES[1:], 1):
            other = np.load(tmp_path / f"{kind}-{i}.npy")
            diff = np.abs(other - utc)
            assert np.array_equal(other, utc), (f"{kind} under TZ={tz}: {int((diff > 0).sum())} arrivals differ "
                                                f"from TZ=UTC, by up to {diff.max():.3g} s")
