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


def test_every_vllm_counterpart_in_the_table_has_a_recording_rule():
    """metrics.md says a vLLM panel works unchanged for the rows with a counterpart, so each `vllm:` series the
    table names is recorded by the rules (found in review: preemptions and V1's inter-token latency were named and
    not recorded, so their vLLM panels stayed empty)."""
    table = [r for r in (DOCS / "metrics.md").read_text().splitlines() if r.startswith("| `warmserve_")]
    mapped = [row.split("|")[4] for row in table if not row.split("|")[4].strip().startswith("—")]
    named = {n for cell in mapped for n in re.findall(r"`(vllm:[a-z0-9_]+)`", cell)}
    rules = (DOCS / "prometheus-vllm-rules.yml").read_text()
    recorded = {_SUFFIX.sub("", n) for n in re.findall(r"record: (vllm:[a-z0-9_]+)", rules)}
    recorded |= set(re.findall(r"record: (vllm:[a-z0-9_]+_total)", rules))
    assert len(named) >= 10 and named <= recorded, named - recorded
