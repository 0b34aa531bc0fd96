"""What `help(warmserve.Cluster)` shows: a class docstring, one on each public method and property (the stream's
too), and each argument of Cluster() described in __init__'s. Found in review: the class, ``models`` and
``TextIterator.finish_reason`` had none, and log_dir, policy, window_s, start_timeout_s and cpu_worker_memory_bytes
were nowhere described."""

import inspect
import re

from warmserve.controller.cluster import Cluster, TextIterator


def _public(cls) -> list[str]:
    return [n for n, v in vars(cls).items() if not n.startswith("_") and (callable(v) or isinstance(v, property))]


def test_the_class_and_each_public_method_and_property_have_a_docstring():
    for cls in (Cluster, TextIterator):
        assert cls.__doc__, cls.__name__
        undocumented = [n for n in _public(cls) if not inspect.getdoc(getattr(cls, n))]
        assert not undocumented, f"{cls.__name__}: {undocumented}"


def test_each_argument_of_cluster_is_described_in_its_docstring():
    doc = inspect.getdoc(Cluster.__init__)
    params = [p for p in inspect.signature(Cluster.__init__).parameters if p != "self"]
    # described: "name:", "``name``" or "``name=...``" (not merely named, as "every other argument but log_dir")
    missing = [p for p in params if not re.search(rf"(?<![\w.]){p}:|``{p}[`=]", doc)]
    assert not missing, missing
