"""deploy/grafana/clinie.json: every metric its PromQL names is one that is exported, by the
Ingress's `/metrics` (serve_app/metrics.py) or by Ray Serve, and the panels the issue asks for are
there."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from prometheus_client.metrics import MetricWrapperBase

from clinie.paths import REPO_ROOT
from serve_app.metrics import Metrics

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "clinie.json"
PRODUCTION = REPO_ROOT / "serve_app" / "configs" / "serve.production.yaml"
RAY_SERVE_SRC = Path(ray.__file__).parent / "serve"

# The Ray Serve metrics the dashboard uses, as Prometheus sees them, and where Ray 2.60 defines
# each (ray/serve/..., a `ray.util.metrics` Counter / Gauge / Histogram; Ray exports it as `ray_` +
# its name, a Counter with `_total`, a Histogram as `_bucket` / `_sum` / `_count`). Checked below
# against the installed Ray's source, so an upgrade that renames one fails here.
RAY_SERVE_METRICS: dict[str, str] = {
    # _private/request_ingress_metrics.py: Counter f"serve_num_{protocol}_requests" (the proxies)
    "ray_serve_num_http_requests_total": "_private/request_ingress_metrics.py",
    "ray_serve_num_grpc_requests_total": "_private/request_ingress_metrics.py",
    # _private/request_ingress_metrics.py: Histogram f"serve_{protocol}_request_latency_ms"
    "ray_serve_http_request_latency_ms_bucket": "_private/request_ingress_metrics.py",
    # _private/replica.py: Histogram "serve_deployment_processing_latency_ms" (each replica)
    "ray_serve_deployment_processing_latency_ms_bucket": "_private/replica.py",
    # _private/deployment_state.py: Gauge "serve_deployment_replica_healthy" (the controller)
    "ray_serve_deployment_replica_healthy": "_private/deployment_state.py",
    # _private/deployment_state.py: Gauge "serve_autoscaling_target_replicas" (the controller)
    "ray_serve_autoscaling_target_replicas": "_private/deployment_state.py",
    # _private/router.py: Gauge "serve_deployment_queued_queries" (each caller's router)
    "ray_serve_deployment_queued_queries": "_private/router.py",
}

# Labels every scraped series may carry besides its own: Prometheus' target labels and the usual
# Kubernetes relabelling of a PodMonitor / ServiceMonitor.
TARGET_LABELS = frozenset({"instance", "job", "namespace", "pod", "container", "service", "endpoint"})

# PromQL functions and aggregation operators (https://prometheus.io/docs/prometheus/latest/querying/functions/).
PROMQL_FUNCTIONS = frozenset(
    """abs absent absent_over_time acos acosh asin asinh atan atanh avg avg_over_time bottomk ceil changes
    clamp clamp_max clamp_min cos cosh count count_over_time count_values day_of_month day_of_week
    day_of_year days_in_month deg delta deriv exp floor group histogram_avg histogram_count
    histogram_fraction histogram_quantile histogram_stddev histogram_stdvar histogram_sum holt_winters
    hour idelta increase irate label_join label_replace last_over_time limitk limit_ratio ln log10 log2
    mad_over_time max max_over_time min min_over_time minute month pi predict_linear present_over_time
    quantile quantile_over_time rad rate resets round scalar sgn sin sinh sort sort_by_label
    sort_by_label_desc sort_desc sqrt stddev stddev_over_time stdvar stdvar_over_time sum sum_over_time
    tan tanh time timestamp topk vector year""".split()
)
PROMQL_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"})
PROMQL_KEYWORDS |= {"unless", "offset", "atan2", "inf", "nan", "Inf", "NaN"}


# -- a PromQL reader: metric names, the labels each selector matches on, the grouping labels ---------


@dataclass
class Query:
    metrics: set[str] = field(default_factory=set)
    selector_labels: dict[str, set[str]] = field(default_factory=dict)
    """Per metric, the label names its `{...}` matchers use."""
    grouping_labels: set[str] = field(default_factory=set)
    """Labels named in by / without / on / ignoring / group_left / group_right."""
    functions: set[str] = field(default_factory=set)
    name_patterns: list[str] = field(default_factory=list)
    """Regular expressions of `{__name__=~"..."}` selectors (an exact `__name__="x"` is in metrics)."""


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_RANGE = re.compile(r"\[[^\]]*\]")  # [5m], [$__rate_interval], subqueries [1h:5m]
_OFFSET = re.compile(r"\boffset\s+-?[\w$]+")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^{}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_NUMBER = re.compile(r"(?<![\w.])(?:0x[0-9a-fA-F]+|\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)")
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")  # Grafana's template variables
_IDENT = re.compile(r"[A-Za-z_:][\w:]*")
_NAME_MATCHER = re.compile(r"__name__\s*(=~|!~|!=|=)\s*(" + _STRING.pattern + ")")


def parse_promql(expr: str) -> Query:
    """Metric names and label references of a PromQL expression, by elimination: string literals,
    template variables, ranges, offsets, grouping clauses and numbers go; selectors' `{...}` give up
    their label names; what remains is functions (an identifier before `(`), keywords, and metrics."""
    q = Query()
    for op, literal in _NAME_MATCHER.findall(expr):
        value = literal[1:-1].replace("\\\\", "\\")
        if op == "=":
            q.metrics.add(value)
        elif op == "=~":
            q.name_patterns.append(value)
        else:
            raise ValueError(f"a negative __name__ matcher names no metric: {expr}")
    text = _STRING.sub('""', expr)
    text = _VARIABLE.sub("", text)
    text = _RANGE.sub("", text)
    text = _OFFSET.sub("", text)
    for labels in _GROUPING.findall(text):
        q.grouping_labels |= {label.strip() for label in labels.split(",") if label.strip()}
    text = _GROUPING.sub(" ", text)

    def selector(match: re.Match[str]) -> str:
        labels = set(_MATCHER_LABEL.findall(match.group(2)))
        name = match.group(1) or ""
        if not name and "__name__" not in labels:
            raise ValueError(f"a selector without a metric name: {expr}")
        if name:
            q.selector_labels.setdefault(name, set()).update(labels)
        return f" {name} "

    text = _SELECTOR.sub(selector, text)
    if "{" in text or "}" in text:
        raise ValueError(f"unbalanced or nested braces: {expr}")
    text = _NUMBER.sub(" ", text)
    for match in _IDENT.finditer(text):
        word = match.group()
        if text[match.end() :].lstrip().startswith("("):
            q.functions.add(word)
        elif word not in PROMQL_KEYWORDS:
            q.metrics.add(word)
    for name in q.selector_labels:
        q.metrics.add(name)
    return q


def test_promql_reader() -> None:
    q = parse_promql(
        'histogram_quantile(0.95, sum by (le, tier) (rate(clinie_tier_latency_seconds_bucket{tier=~"b.{2}",'
        "api!='x'}[$__rate_interval] offset 1h)))"
        " / on (tier) group_left sum(rate(foo:bar_total[5m:1m])) * 1e3 > bool 0.5 unless absent(up)"
    )
    assert q.metrics == {"clinie_tier_latency_seconds_bucket", "foo:bar_total", "up"}
    assert q.selector_labels == {"clinie_tier_latency_seconds_bucket": {"tier", "api"}}
    assert q.grouping_labels == {"le", "tier"}
    assert q.functions == {"histogram_quantile", "sum", "rate", "absent"}
    # Grouping after the aggregated expression, Grafana variables in ${} form.
    q = parse_promql("sum(increase(clinie_cost_total[${__range}])) by (tier)")
    assert (q.metrics, q.grouping_labels) == ({"clinie_cost_total"}, {"tier"})
    # Names given as __name__ matchers (Ray's own dashboards use the regex form).
    q = parse_promql('sum(rate({__name__=~"ray_serve_(http|grpc)_request_latency_ms_bucket",route!~"/-/.*"}[5m]))')
    assert (q.metrics, q.name_patterns) == (set(), ["ray_serve_(http|grpc)_request_latency_ms_bucket"])
    assert parse_promql('{__name__="clinie_cost_total", tier="llm"}').metrics == {"clinie_cost_total"}
    with pytest.raises(ValueError, match="names no metric"):
        parse_promql('{__name__!="clinie_cost_total"}')
    with pytest.raises(ValueError, match="without a metric name"):
        parse_promql('sum({tier="llm"})')


# -- what is exported ---------------------------------------------------------------------------------


def _collectors(metrics: Metrics) -> Iterator[MetricWrapperBase]:
    return (value for value in vars(metrics).values() if isinstance(value, MetricWrapperBase))


def clinie_exported() -> dict[str, set[str]]:
    """The sample names `/metrics` carries (the Ingress serves Metrics().render()), each with its
    label names. Read from the rendered text's `# TYPE` lines, so it is what a scrape sees."""
    metrics = Metrics()
    labels_by_family = {c._name: set(c._labelnames) for c in _collectors(metrics)}  # prometheus_client's own fields
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
    }
    exported: dict[str, set[str]] = {}
    for line in metrics.render().decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()
            base = family.removesuffix("_total") if kind == "counter" else family
            if base not in labels_by_family and base.removesuffix("_created") in labels_by_family:
                # An unlabelled counter's `_created` series, rendered as a gauge family of its own.
                exported[base] = labels_by_family[base.removesuffix("_created")]
                continue
            for suffix in suffixes[kind]:
                label_names = labels_by_family[base] | ({"le"} if suffix == "_bucket" else set())
                exported[base + suffix] = label_names
    return exported


def ray_serve_exported() -> dict[str, str]:
    """Every metric name Ray Serve exports, as Prometheus sees it, read from the installed Ray's
    source: each `metrics.Counter/Gauge/Histogram("name", ...)` in ray/serve (f-string names over
    the two protocols), mapped to the file that defines it."""
    call = re.compile(r"metrics\.(Counter|Gauge|Histogram)\(\s*(?:name\s*=\s*)?(f?)\"([^\"]+)\"")
    exported: dict[str, str] = {}
    for path in RAY_SERVE_SRC.rglob("*.py"):
        for kind, is_f, name in call.findall(path.read_text()):
            names = [name.replace("{protocol_name}", p) for p in ("http", "grpc")] if is_f else [name]
            for n in names:
                if "{" in n:
                    continue  # a placeholder this reader does not expand
                base = "ray_" + n
                if kind == "Counter":
                    forms = [base.removesuffix("_total") + "_total"]
                elif kind == "Histogram":
                    forms = [base + s for s in ("_bucket", "_sum", "_count")]
                else:
                    forms = [base]
                for form in forms:
                    exported[form] = str(path.relative_to(RAY_SERVE_SRC))
    return exported


def test_ray_serve_names_match_rays_own_dashboards() -> None:
    """The name derivation above is Ray's: every ray_serve_* series Ray's own Serve dashboards query
    (ray/dashboard/modules/metrics/dashboards) is one it produces."""
    from ray.dashboard.modules.metrics.dashboards.serve_dashboard_panels import SERVE_GRAFANA_PANELS
    from ray.dashboard.modules.metrics.dashboards.serve_deployment_dashboard_panels import (
        SERVE_DEPLOYMENT_GRAFANA_PANELS,
    )

    exported = ray_serve_exported()
    used: set[str] = set()
    for panel in [*SERVE_GRAFANA_PANELS, *SERVE_DEPLOYMENT_GRAFANA_PANELS]:
        for target in panel.targets:
            expr = target.expr.replace("{global_filters}", "").replace("{{", "{").replace("}}", "}")
            q = parse_promql(expr)
            used |= {m for m in q.metrics if m.startswith("ray_serve_")}
            for pattern in q.name_patterns:
                matched = {n for n in exported if re.fullmatch(pattern, n)}
                assert matched, pattern
                used |= matched
    assert len(used) >= 10
    assert used <= set(exported), sorted(used - set(exported))


# -- the dashboard ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel, target


def test_every_metric_the_dashboard_queries_is_exported(dashboard: dict[str, Any]) -> None:
    clinie = clinie_exported()
    ray_serve = ray_serve_exported()
    used_ray: set[str] = set()
    for panel, target in _targets(dashboard):
        q = parse_promql(target["expr"])
        assert q.metrics and not q.name_patterns, (panel["title"], target["expr"])  # names spelt out, checkable
        assert q.functions <= PROMQL_FUNCTIONS, (panel["title"], q.functions - PROMQL_FUNCTIONS)
        for name in q.metrics:
            if name.startswith("ray_"):
                assert name in ray_serve, f"{panel['title']}: {name} is not a Ray Serve metric"
                used_ray.add(name)
                continue
            assert name in clinie, f"{panel['title']}: {name} is not exported by /metrics ({sorted(clinie)})"
            # The labels it is filtered and grouped on are its own (or the scrape's).
            allowed = clinie[name] | TARGET_LABELS
            assert q.selector_labels.get(name, set()) <= allowed, (panel["title"], name)
        own = set().union(*(clinie.get(m, set()) for m in q.metrics))
        if not any(m.startswith("ray_") for m in q.metrics):
            assert q.grouping_labels <= own | TARGET_LABELS, (panel["title"], q.grouping_labels - own)
    # The list above is complete and each name is defined where it says.
    assert used_ray == set(RAY_SERVE_METRICS)
    for name, where in RAY_SERVE_METRICS.items():
        assert ray_serve[name] == where, (name, ray_serve[name])


def test_the_reader_refuses_a_misspelt_metric(dashboard: dict[str, Any]) -> None:
    """The check above has teeth: a typo in a name or a label is caught."""
    clinie = clinie_exported()
    assert "clinie_requests_total" in clinie and "clinie_request_total" not in clinie
    assert "clinie_tier_latency_seconds_bucket" in clinie and clinie["clinie_tier_latency_seconds_bucket"] >= {"tier"}
    assert "ray_serve_deployment_replica_healthy" in ray_serve_exported()
    assert "ray_serve_deployment_replica_health" not in ray_serve_exported()
    # Gauges have no _total; counters have no bare name.
    assert "clinie_escalation_rate" in clinie and "clinie_cost" not in clinie


def test_dashboard_covers_what_operators_look_at(dashboard: dict[str, Any]) -> None:
    """Request rate and status, latency by stage, escalation rate, cost by tier, refusals by reason,
    replicas per deployment: each has a panel querying the metric that measures it, broken down by
    the label that makes it useful."""
    wanted = {
        ("clinie_requests_total", "status"),
        ("clinie_tier_latency_seconds_bucket", "tier"),
        ("clinie_cost_total", "tier"),
        ("clinie_rejected_total", "reason"),
        ("ray_serve_deployment_replica_healthy", "deployment"),
        ("clinie_notes_total", "tier"),
    }
    seen: set[tuple[str, str]] = set()
    for _, target in _targets(dashboard):
        q = parse_promql(target["expr"])
        seen |= {(m, label) for m in q.metrics for label in q.grouping_labels}
    assert wanted <= seen, wanted - seen
    escalation = [t["expr"] for _, t in _targets(dashboard) if "clinie_escalated_sentences_total" in t["expr"]]
    assert any("clinie_sentences_total" in e for e in escalation)  # a rate: escalated / all sentences


def test_dashboard_is_a_well_formed_grafana_model(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    (var,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert var["query"] == "prometheus"
    ref = {"type": "prometheus", "uid": f"${{{var['name']}}}"}
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, panel["title"]
        own = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not own & cells, f"{panel['title']} overlaps another panel"
        cells |= own
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == ref and panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert all(t["datasource"] == ref for t in panel["targets"]), panel["title"]
    # Ray series are filtered to this application, by the name the Serve config gives it.
    app_name = yaml.safe_load(PRODUCTION.read_text())["applications"][0]["name"]
    for _, target in _targets(dashboard):
        if "ray_serve_" in target["expr"]:
            assert f'application="{app_name}"' in target["expr"], target["expr"]
