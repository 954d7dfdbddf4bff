"""Prometheus configuration, alert rules and the Grafana dashboard of the compose stack: the files parse,
every PromQL expression parses (promql-parser, a port of Prometheus' own parser), and every series they
query is one the service exports."""

from __future__ import annotations

import json
import re
from typing import Any

import promql_parser
import pytest
import yaml

from tests.support.deploy_contract import DOCKER, METRICS, exposed_series

PROMETHEUS = DOCKER / "prometheus"
GRAFANA = DOCKER / "grafana"
# Grafana replaces these before the query reaches Prometheus; a representative value keeps them parseable.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$model": "digits-sosae"}


def series_in(expr: str) -> set[str]:
    """Names of the series an expression selects; raises ValueError when it does not parse."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads((GRAFANA / "dashboards" / "sparsecodes.json").read_text())


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL with Grafana's variables filled in) for every query of the dashboard."""
    out = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            out.append((panel["title"], expr))
    return out


def test_the_parser_rejects_broken_promql() -> None:
    with pytest.raises(ValueError):
        series_in("sum(rate(sparsecodes_request_duration_seconds_count[5m])")


# ---------- Prometheus ----------


def test_prometheus_scrapes_the_api_and_loads_the_rules() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "sparsecodes"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["api:8000"]  # compose service `api`, container port
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]


def test_every_alert_rule_is_complete_and_parses() -> None:
    known = exposed_series() | {"up"}
    for rule in rules():
        name = rule["alert"]
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, name
        assert series_in(rule["expr"]) <= known, f"{name} queries a series the service does not export"
        assert promql_parser.parse_duration(rule["for"]).total_seconds() >= 60, name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_alerts_cover_latency_errors_and_cache() -> None:
    by_name = {rule["alert"]: re.sub(r"\s+", " ", rule["expr"]) for rule in rules()}
    latency = by_name["SparsecodesHighP99Latency"]
    assert "histogram_quantile(0.99," in latency and "sparsecodes_request_duration_seconds_bucket" in latency
    errors = by_name["SparsecodesHighErrorRate"]
    assert 'status=~"5.."' in errors and "sparsecodes_request_duration_seconds_count" in errors
    cache = by_name["SparsecodesCacheErrors"]
    assert 'result="error"' in cache and "sparsecodes_cache_requests_total" in cache


# ---------- Grafana ----------


def test_grafana_data_source_is_the_compose_prometheus() -> None:
    provisioning = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = provisioning["datasources"]
    assert (source["type"], source["url"], source["uid"]) == (
        "prometheus",
        "http://prometheus:9090",
        "prometheus",
    )
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["current"]["value"] == source["uid"]


def test_grafana_loads_the_dashboard_folder() -> None:
    provisioning = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "sparsecodes.yml").read_text())
    (provider,) = provisioning["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"  # where compose mounts dashboards/


def test_every_dashboard_query_parses_and_uses_exported_series() -> None:
    queries = dashboard_queries()
    assert len(queries) >= 10
    known = exposed_series()
    for title, expr in queries:
        series = series_in(expr)
        assert series and series <= known, f"{title}: {expr}"


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    panels = {p["title"]: p for p in dashboard()["panels"]}
    queries = {title: [e for t, e in dashboard_queries() if t == title] for title in panels}
    rate = " ".join(queries["Request rate"])
    assert "rate(sparsecodes_request_duration_seconds_count" in rate
    latency = queries["Latency percentiles"]
    assert [q.split(",")[0] for q in latency] == [f"histogram_quantile({p}" for p in ("0.5", "0.9", "0.99")]
    # Active-dimension distribution per model: quantiles grouped by model, and a heatmap repeated per model.
    assert all("by (le, model)" in q for q in queries["Active dimensions (L0) per model: median and p90"])
    heatmap = panels["Active-dimension distribution: $model"]
    assert heatmap["type"] == "heatmap" and heatmap["repeat"] == "model"
    assert "sparsecodes_active_dims_bucket" in heatmap["targets"][0]["expr"]
    (hit_ratio,) = queries["Cache hit ratio"]
    assert 'result="hit"' in hit_ratio and 'result=~"hit|miss"' in hit_ratio


def test_dashboard_model_variable_lists_the_loaded_models() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    model = variables["model"]
    assert model["query"]["query"] == "label_values(sparsecodes_model_info, model)"
    assert model["multi"] and model["includeAll"]
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


# ---------- the contract, against the service's own metric declarations ----------


def test_the_service_declares_exactly_these_metrics() -> None:
    from prometheus_client import REGISTRY

    import sparsecodes.serve.metrics  # noqa: F401  (declares the metrics in the default registry)

    declared = {}
    for family in REGISTRY.collect():
        if family.name.startswith("sparsecodes_"):
            # prometheus_client names a counter's family without the _total its samples carry.
            exposed = family.name + "_total" if family.type == "counter" else family.name
            declared[exposed] = family.type
    assert declared == {name: kind for name, (kind, _) in METRICS.items()}
    for name, (_, labels) in METRICS.items():
        collector = REGISTRY._names_to_collectors[name]  # label names are only kept on the collector
        assert tuple(collector._labelnames) == labels, name


def test_queries_group_by_labels_the_metrics_have() -> None:
    labels = {label for _, names in METRICS.values() for label in names} | {"le", "instance", "job"}
    expressions = [rule["expr"] for rule in rules()] + [expr for _, expr in dashboard_queries()]
    for expr in expressions:
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            used = {label.strip() for label in group.split(",")}
            assert used <= labels, f"unknown label in {expr}"
