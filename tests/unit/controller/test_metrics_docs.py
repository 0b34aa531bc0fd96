"""docs/metrics.md, the Grafana dashboard and the vLLM recording rules name only series /metrics really has, and the
doc names every series it has."""

import json
import pathlib
import re

from prometheus_client.parser import text_string_to_metric_families

from warmserve.controller.metrics import ControllerMetrics, Counter, Gauge, Histogram

DOCS = pathlib.Path(__file__).resolve().parents[3] / "docs"
_SUFFIX = re.compile(r"_(total|bucket|sum|count|created)$")


def _families() -> set[str]:
    m = ControllerMetrics()
    # every labelled series needs one child to be exposed: give each metric a sample
    for attr in vars(m).values():
        labels = {n: "x" for n in getattr(attr, "label_names", ())}
        if isinstance(attr, Counter):
            attr.inc(**labels)
        elif isinstance(attr, Gauge):
            attr.set(1, **labels)
        elif isinstance(attr, Histogram):
            attr.observe(0.1, **labels)
    return {f.name for f in text_string_to_metric_families(m.registry.render())}


def _names(text: str) -> set[str]:
    return {_SUFFIX.sub("", n) for n in re.findall(r"\bwarmserve_[a-z_]+", text)}


def test_dashboard_and_rules_query_existing_series():
    fams = _families()
    dash = json.loads((DOCS / "grafana-warmserve.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    used = _names(exprs)
    assert used and used <= fams, used - fams
    assert _names((DOCS / "prometheus-vllm-rules.yml").read_text()) <= fams


def test_the_doc_maps_every_series():
    doc = (DOCS / "metrics.md").read_text()
    fams = {f for f in _families() if not f.endswith("_created")}  # prometheus_client's start-time gauges
    assert len(fams) >= 19 and fams <= _names(doc), fams - _names(doc)
