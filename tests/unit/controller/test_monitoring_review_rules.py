"""docs/prometheus-vllm-rules.yml against vLLM's meanings and its unit tests (docs/prometheus-vllm-rules.test.yml).

Found when a real Prometheus evaluated the rules over a demo server: warmserve's TPOT, one mean per request, was
published only as vLLM's per-token series (``time_per_output_token``, ``inter_token_latency``: one observation per
output token), not as ``vllm:request_time_per_output_token_seconds``, vLLM's per-request one. The mapping check reads
the vLLM column of docs/metrics.md and asks that each name there is recorded from that row's series; promtool's
unit tests run where promtool is on PATH (``apt-get install prometheus``), and CI without it checks that every
rule's output is tested there."""

import pathlib
import re
import shutil
import subprocess

import pytest
import yaml

DOCS = pathlib.Path(__file__).resolve().parents[3] / "docs"
RULES = DOCS / "prometheus-vllm-rules.yml"
RULE_TESTS = DOCS / "prometheus-vllm-rules.test.yml"
_VLLM = re.compile(r"`(vllm:[a-zA-Z0-9_:]+)`")


def _records() -> dict[str, str]:
    return {r["record"]: r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}


def _doc_rows() -> list[tuple[str, str, list[str]]]:
    """(warmserve series, its type, the vLLM names of its counterpart cell) per row of metrics.md that has one."""
    out = []
    for row in (DOCS / "metrics.md").read_text().splitlines():
        if not row.startswith("| `warmserve_"):
            continue
        cells = [c.strip() for c in row.split("|")]
        if cells[4].startswith(("—", "-")):
            continue  # no counterpart; the cell may name vLLM series that differ
        names = re.findall(r"`(warmserve_[a-zA-Z0-9_]+)`", cells[1])
        out.append((names[0], cells[2], _VLLM.findall(cells[4])))
    return out


def test_each_vllm_counterpart_in_metrics_md_is_recorded_from_its_series():
    records, problems = _records(), []
    rows = _doc_rows()
    assert len(rows) >= 10, "metrics.md's table no longer reads as expected"
    for series, typ, vllm_names in rows:
        for name in vllm_names:
            if typ == "histogram":
                wanted = [(name + s, series + s) for s in ("_bucket", "_sum", "_count")]
            else:
                wanted = [(name, series)]  # a counter by its _total sample, as the table names it
            for record, source in wanted:
                if record not in records:
                    problems.append(f"metrics.md maps {series} to {name}, but no rule records {record}")
                elif not re.search(rf"\b{source}\b", records[record]):
                    problems.append(f"{record} is recorded from {records[record]!r}, not {source}")
    assert not problems, "\n".join(problems)


def test_every_rule_output_is_unit_tested():
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == [RULES.name]
    exprs = " ".join(t["expr"] for case in tests["tests"] for t in case["promql_expr_test"])
    untested = [r for r in _records() if not re.search(rf"(?<![a-zA-Z0-9_:]){re.escape(r)}(?![a-zA-Z0-9_:])", exprs)]
    assert not untested, f"rules with no promql_expr_test in {RULE_TESTS.name}: {untested}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (apt-get install prometheus)")
def test_promtool_checks_and_unit_tests_the_rules():
    for args in (["check", "rules", RULES.name], ["test", "rules", RULE_TESTS.name]):
        done = subprocess.run(["promtool", *args], cwd=DOCS, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
