"""docs/metrics.md, the Grafana dashboard and the vLLM recording rules agree with what a real ControllerMetrics
renders: series names with their Prometheus suffixes, types and label names, not names alone
(test_metrics_docs.py). Each check collects its mismatches so that one run lists every drift.

PromQL is read with regexes over metric-name tokens, selectors, ``by``/``without`` lists, ``label_replace`` and
``label_values`` arguments, which are the only forms the documents use: PyPI has no pure-Python PromQL parser
(promql-parser is a 5 MB compiled Rust extension, promqlpy an sdist that builds Go code)."""

import json
import pathlib
import re
from types import SimpleNamespace as NS

import yaml
from prometheus_client.parser import text_string_to_metric_families

from warmserve.controller.metrics import OUTCOMES, ControllerMetrics, Counter, Gauge, Histogram

DOCS = pathlib.Path(__file__).resolve().parents[3] / "docs"
_NAME = re.compile(r"\bwarmserve_[a-zA-Z0-9_]+\b")
_SELECTOR = re.compile(r"\b(warmserve_[a-zA-Z0-9_]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')
_GROUPING = re.compile(r"\b(by|without)\s*\(([^)]*)\)")
_LABEL_REPLACE = re.compile(r"label_replace\(")
_SUFFIX = re.compile(r"_(total|created|bucket|sum|count)$")
_LEGEND = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")
_RULE_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def _after_events() -> ControllerMetrics:
    """A ControllerMetrics after a finished request, an aborted one, a failed one, a refused HTTP request and a
    prewarm hit, each through the hook the controller calls (request_done rewrites an abort's outcome,
    rejected_request stringifies the status)."""
    m = ControllerMetrics()
    m.model_series("m")
    done = NS(model="m", generated=3, arrival_s=1.0, first_token_s=1.2, last_token_s=1.5, abort_reason="")
    m.tokens_pushed(done, 0, None)
    m.request_done(done, "stop")
    aborted = NS(model="m", generated=1, arrival_s=1.0, first_token_s=1.1, last_token_s=1.1, abort_reason="")
    m.tokens_pushed(aborted, 0, None)
    m.request_done(aborted, "abort", now_s=2.0)
    m.request_done(NS(model="m", generated=0, arrival_s=1.0, first_token_s=None, last_token_s=None,
                      abort_reason=""), "error", now_s=2.0)
    m.rejected_request(503, "/v1/completions")
    m.prewarm_hits.inc(model="m")
    return m


def _exported() -> dict[str, tuple[str, frozenset]]:
    """Every sample name a scrape can show -> (its family's type, its label names but ``le``): the series no hook
    filled in ``_after_events`` get one sample with their declared labels, as a labelled series without a child
    renders no sample."""
    m = _after_events()
    filled = {f.name for f in text_string_to_metric_families(m.registry.render()) if f.samples}
    for metric in vars(m).values():
        if not isinstance(metric, (Counter, Gauge, Histogram)) or metric.name in filled:
            continue
        labels = {n: "x" for n in metric.label_names}
        if isinstance(metric, Counter):
            metric.inc(**labels)
        elif isinstance(metric, Gauge):
            metric.set(1, **labels)
        else:
            metric.observe(0.1, **labels)
    out = {}
    for fam in text_string_to_metric_families(m.registry.render()):
        for s in fam.samples:
            labels = out.get(s.name, (None, frozenset()))[1] | (set(s.labels) - {"le"})
            out[s.name] = (fam.type, frozenset(labels))
    return out


def _series(exported: dict) -> dict[str, tuple[str, frozenset]]:
    """The series as metrics.md names them: a counter by its ``_total`` sample, a histogram by its family name,
    a gauge by its name; ``_created`` left out (prometheus_client's start times, named in the doc's prose)."""
    out = {}
    for name, (typ, labels) in exported.items():
        if name.endswith("_created"):
            continue
        if typ == "histogram":
            name = re.sub(r"_(bucket|sum|count)$", "", name)
        out[name] = (typ, labels)
    return out


def _labels_cell(cell: str) -> frozenset:
    cell = cell.strip()
    return frozenset() if cell in ("—", "-", "") else frozenset(x.strip() for x in cell.split(","))


def _check_doc(exported: dict, problems: list[str]) -> None:
    series = _series(exported)
    text = (DOCS / "metrics.md").read_text()
    documented = set()
    for row in text.splitlines():
        if not row.startswith("| `warmserve_"):
            continue
        cells = row.split("|")
        typ, labels = cells[2].strip(), _labels_cell(cells[3])
        for name in re.findall(r"`(warmserve_[a-zA-Z0-9_]+)`", cells[1]):
            documented.add(name)
            if name not in series:
                problems.append(f"metrics.md: row {name} is no exported series")
                continue
            if series[name][0] != typ:
                problems.append(f"metrics.md: {name} documented as {typ}, exported as {series[name][0]}")
            if series[name][1] != labels:
                problems.append(f"metrics.md: {name} labels {sorted(labels)} != exported {sorted(series[name][1])}")
    for name in sorted(set(series) - documented):
        problems.append(f"metrics.md: exported {name} ({series[name][0]}, labels {sorted(series[name][1])}) "
                        "has no row")
    # the prose too: a name an operator copies from it must be scrapeable (a histogram by its family name)
    for name in sorted(set(_NAME.findall(text)) - set(exported) - set(series)):
        problems.append(f"metrics.md: names {name}, which no scrape has")
    for name, body in _SELECTOR.findall(text):
        _check_matchers("metrics.md", name, body, exported, problems)


def _check_matchers(where: str, name: str, body: str, exported: dict, problems: list[str]) -> None:
    if name not in exported:
        return  # reported as an unknown name
    labels = exported[name][1] | ({"le"} if name.endswith("_bucket") else set())
    for label, _, value in _MATCHER.findall(body):
        if label not in labels:
            problems.append(f"{where}: {name}{{{label}=...}}: {name} has no label {label} ({sorted(labels)})")
        if label == "outcome" and not set(value.split("|")) <= set(OUTCOMES):
            problems.append(f"{where}: {name}{{outcome=\"{value}\"}}: outcomes are {OUTCOMES}")


def _args(expr: str, start: int) -> list[str]:
    """The top-level arguments of the call whose ``(`` is at ``start``."""
    depth, args, cur = 0, [], ""
    for ch in expr[start:]:
        if ch in "([{":
            depth += 1
            if depth == 1:
                continue
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                break
        elif ch == "," and depth == 1:
            args.append(cur.strip())
            cur = ""
            continue
        cur += ch
    return args + [cur.strip()]


def _check_expr(where: str, expr: str, exported: dict, problems: list[str], legend: str = "") -> None:
    """Names with their suffixes, selector labels, grouping labels, label_replace sources and legend labels."""
    if any(expr.count(o) != expr.count(c) for o, c in ("()", "[]", "{}")):
        problems.append(f"{where}: unbalanced brackets in {expr!r}")
    names = _NAME.findall(expr)
    if not names:
        problems.append(f"{where}: queries no warmserve series: {expr!r}")
    for name in names:
        if name not in exported:
            stem = _SUFFIX.sub("", name)
            near = sorted(n for n in exported if _SUFFIX.sub("", n) == stem)
            problems.append(f"{where}: {name} is not exported" + (f" (the scrape has {near})" if near else ""))
    for name, body in _SELECTOR.findall(expr):
        _check_matchers(where, name, body, exported, problems)
    have = set().union(*(exported[n][1] for n in names if n in exported))
    have |= {"le"} if any(n.endswith("_bucket") for n in names) else set()
    made = set()
    for match in _LABEL_REPLACE.finditer(expr):
        args = _args(expr, match.end() - 1)
        if len(args) != 5:
            problems.append(f"{where}: label_replace takes 5 arguments, got {len(args)} in {expr!r}")
            continue
        made.add(args[1].strip('"'))
        if args[3].strip('"') not in have:
            problems.append(f"{where}: label_replace reads label {args[3]} that {names} lack")
    kept = have | made
    for kind, body in _GROUPING.findall(expr):
        for label in (x.strip() for x in body.split(",") if x.strip()):
            if label not in have | made:
                problems.append(f"{where}: {kind} ({label}) names no label of {sorted(set(names))}")
        if kind == "by":
            kept &= {x.strip() for x in body.split(",")}
        else:
            kept -= {x.strip() for x in body.split(",")}
    for label in _LEGEND.findall(legend):
        if label not in kept:
            problems.append(f"{where}: legend {{{{{label}}}}} is no label of the result ({sorted(kept)})")


def _panels(panels: list) -> list[dict]:
    out = []
    for p in panels:
        out.append(p)
        out.extend(_panels(p.get("panels", [])))
    return out


def _check_dashboard(exported: dict, problems: list[str]) -> None:
    try:
        dash = json.loads((DOCS / "grafana-warmserve.json").read_text())
    except json.JSONDecodeError as e:
        problems.append(f"grafana-warmserve.json: not JSON: {e}")
        return
    panels = _panels(dash.get("panels", []))
    ids = [p.get("id") for p in panels]
    if any(not isinstance(i, int) for i in ids) or len(ids) != len(set(ids)):
        problems.append(f"grafana-warmserve.json: panel ids are not unique integers: {ids}")
    for p in panels:
        refs = [t.get("refId") for t in p.get("targets", [])]
        if len(refs) != len(set(refs)):
            problems.append(f"grafana-warmserve.json: panel {p.get('id')}: refIds repeat: {refs}")
        for t in p.get("targets", []):
            _check_expr(f"grafana panel {p.get('id')} {p.get('title')!r} {t.get('refId')}", t.get("expr", ""),
                        exported, problems, t.get("legendFormat", ""))
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") == "datasource":  # its query is a data source type ("prometheus"), not PromQL
            continue
        query = var.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        for q in {query, var.get("definition", "")} - {""}:
            m = re.fullmatch(r"\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*", q)
            if m is None:
                _check_expr(f"grafana variable {var.get('name')}", q, exported, problems)
                continue
            _check_expr(f"grafana variable {var.get('name')}", m[1], exported, problems)
            if not all(m[2] in exported.get(n, ("", frozenset()))[1] for n in _NAME.findall(m[1])):
                problems.append(f"grafana variable {var.get('name')}: {m[1]} has no label {m[2]}")


def _check_rules(exported: dict, problems: list[str]) -> None:
    where = "prometheus-vllm-rules.yml"
    try:
        doc = yaml.safe_load((DOCS / where).read_text())
    except yaml.YAMLError as e:
        problems.append(f"{where}: not YAML: {e}")
        return
    if not isinstance(doc, dict) or set(doc) != {"groups"} or not isinstance(doc["groups"], list):
        problems.append(f"{where}: the top level must be {{groups: [...]}}, got {type(doc).__name__}")
        return
    names = [g.get("name") if isinstance(g, dict) else None for g in doc["groups"]]
    if any(not isinstance(n, str) or not n for n in names) or len(names) != len(set(names)):
        problems.append(f"{where}: group names must be unique non-empty strings: {names}")
    for g in doc["groups"]:
        if not isinstance(g, dict) or not isinstance(g.get("rules"), list) or not g["rules"]:
            problems.append(f"{where}: group {g!r:.60} has no list of rules")
            continue
        unknown = set(g) - {"name", "interval", "rules", "limit", "query_offset", "labels"}
        if unknown:
            problems.append(f"{where}: group {g.get('name')}: unknown keys {sorted(unknown)}")
        for i, rule in enumerate(g["rules"]):
            at = f"{where}: group {g.get('name')} rule {i}"
            if not isinstance(rule, dict) or set(rule) - {"record", "expr", "labels"} or "record" not in rule:
                problems.append(f"{at}: a recording rule has record, expr and optional labels: {rule!r:.80}")
                continue
            if not isinstance(rule["record"], str) or not _RULE_NAME.match(rule["record"]):
                problems.append(f"{at}: record {rule['record']!r} is no metric name")
            if not isinstance(rule.get("expr"), str) or not rule["expr"].strip():
                problems.append(f"{at} ({rule['record']}): expr must be a non-empty string")
                continue
            _check_expr(f"{at} ({rule['record']})", rule["expr"], exported, problems)


def test_docs_dashboard_and_rules_match_the_exported_series():
    exported = _exported()
    problems: list[str] = []
    _check_doc(exported, problems)
    _check_dashboard(exported, problems)
    _check_rules(exported, problems)
    assert not problems, "monitoring artefacts drifted from ControllerMetrics:\n" + "\n".join(problems)


def test_the_exposition_reads_back_after_a_realistic_set_of_events():
    """prometheus_client's own parser reads a scrape after a finished, an aborted and a failed request, a refused
    HTTP request and a prewarm hit, and each event is counted under the labels the docs name."""
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for f in text_string_to_metric_families(_after_events().registry.render()) for s in f.samples}
    for outcome in ("stop", "abort", "error"):
        assert got[("warmserve_requests_total", (("model", "m"), ("outcome", outcome)))] == 1.0, outcome
        assert got[("warmserve_request_seconds_count", (("model", "m"), ("outcome", outcome)))] == 1.0, outcome
    assert got[("warmserve_requests_total", (("model", "m"), ("outcome", "length")))] == 0.0
    assert got[("warmserve_rejected_requests_total", (("route", "/v1/completions"), ("status", "503")))] == 1.0
    assert got[("warmserve_prewarm_hits_total", (("model", "m"),))] == 1.0
    assert got[("warmserve_ttft_seconds_count", (("model", "m"),))] == 2.0
    assert got[("warmserve_generation_tokens_total", (("model", "m"),))] == 4.0
