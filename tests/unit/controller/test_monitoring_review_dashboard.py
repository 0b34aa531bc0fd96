"""docs/grafana-warmserve.json read as a live Prometheus answers it (found when a real Prometheus 2.42 scraped a
demo server): a fixed ``[1m]`` rate window returned no series at Prometheus's default 1 m scrape interval (one sample
a window; Prometheus 3 leaves a range's start out, so never), and the prewarm hit ratio read 0 for a model with no
instance start in its window, as its denominator was clamped to 1e-9 rather than left without a value."""

import json
import pathlib
import re

DASHBOARD = pathlib.Path(__file__).resolve().parents[3] / "docs" / "grafana-warmserve.json"
# Prometheus's default scrape_interval; Grafana's $__rate_interval is at least 4 of them, so that a rate has 2+ samples
# when one scrape is missed.
DEFAULT_SCRAPE_S = 60
_RANGE = re.compile(r"\[([^\]]+)\]")
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def _targets() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    return [(f"panel {p.get('id')} {p.get('title')!r} {t.get('refId')}", t.get("expr", ""))
            for p in dash.get("panels", []) for t in p.get("targets", [])]


def _seconds(duration: str) -> float | None:
    """A PromQL duration (``5m``, ``1h30m``) in seconds; None for anything else (a Grafana variable)."""
    parts = _DURATION.findall(duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        return None
    return sum(int(n) * _UNIT_S[u] for n, u in parts)


def _after_top_level_division(expr: str) -> str | None:
    depth = 0
    for i, ch in enumerate(expr):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "/" and depth == 0:
            return expr[i + 1:].strip()
    return None


def test_rate_windows_hold_two_samples_at_the_default_scrape_interval():
    problems = []
    for where, expr in _targets():
        for window in _RANGE.findall(expr):
            window = window.split(":")[0].strip()  # a subquery's range
            if window == "$__rate_interval":
                continue
            s = _seconds(window)
            if s is None or s < 4 * DEFAULT_SCRAPE_S:
                problems.append(f"{where}: [{window}] (use [$__rate_interval], or at least "
                                f"{4 * DEFAULT_SCRAPE_S // 60}m: 4 scrapes of Prometheus's default 1m)")
    assert not problems, "\n".join(problems)


def test_ratios_have_no_value_where_their_denominator_is_zero():
    """A clamped denominator turns "nothing happened" into 0 (a 0 % hit ratio for a model with no start); a
    comparison filter (``(... > 0)``) leaves that time without a value, as Grafana shows no data."""
    problems = []
    for where, expr in _targets():
        denominator = _after_top_level_division(expr)
        if denominator is None:
            continue
        if re.match(r"clamp(_min)?\s*\(", denominator) or not re.search(r">\s*0\s*\)?\s*$", denominator):
            problems.append(f"{where}: denominator {denominator[:60]!r}... is not filtered by '> 0'")
    assert not problems, "\n".join(problems)


def test_the_duration_reader_and_the_division_finder():
    assert _seconds("5m") == 300 and _seconds("1h30m") == 5400 and _seconds("$__rate_interval") is None
    assert _after_top_level_division("sum by (a) (rate(x[5m])) / (sum(y) > 0)") == "(sum(y) > 0)"
    assert _after_top_level_division("histogram_quantile(0.5, sum(rate(x[5m])))") is None


def test_quantiles_have_no_value_where_no_request_was_observed():
    """histogram_quantile of a window with no observation is NaN, which Grafana's legend and tooltips print as
    "NaN" for an idle model (the monitoring review's leftover); a ``>= 0`` filter drops it (NaN compares false), so
    the time shows no data, as the ratios do."""
    quantiles = [(where, expr) for where, expr in _targets() if "histogram_quantile" in expr]
    assert len(quantiles) >= 7, quantiles
    problems = [f"{where}: {expr[-60:]!r} is not filtered by '>= 0'" for where, expr in quantiles
                if not expr.startswith("histogram_quantile(") or not re.search(r"\)\s*>=\s*0$", expr.strip())]
    assert not problems, "\n".join(problems)


def test_every_data_source_reference_is_a_dashboard_variable():
    """``${DS_PROMETHEUS}`` is filled in by Grafana's import (``__inputs``) only; a dashboard provisioned from a file
    is not imported, and there an uid naming no variable finds no data source (the monitoring review's leftover). A
    datasource variable of that name resolves it in both: import still replaces the references with the uid chosen."""
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    refs = set(re.findall(r'"uid":\s*"\$\{(\w+)\}"', DASHBOARD.read_text()))
    assert refs, "no data source reference found"
    for name in refs:
        assert name in variables and variables[name]["type"] == "datasource", (name, sorted(variables))
        assert variables[name]["query"] == "prometheus", variables[name]
    assert {i["name"] for i in dash.get("__inputs", [])} >= refs  # and the import still asks for each
