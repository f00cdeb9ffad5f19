"""Writes the monitoring files that are derived, not edited by hand.

- monitoring/grafana/dashboards/*.json: Inkwell's Grafana dashboards, built here so every
  panel has the same data-source variable, units and layout. Grafana loads the JSON (Compose
  provisioning; the Kubernetes ConfigMap made by monitoring/kustomization.yaml).
- k8s/components/prometheus-operator/inkwell-prometheusrule.yaml: the PrometheusRule, a copy
  of monitoring/prometheus/rules/*.yml (the one source of the rules) in the operator's format.
- k8s/components/prometheus-operator/inkwell-alertmanagerconfig.yaml: the AlertmanagerConfig,
  the routes of monitoring/alertmanager/alertmanager.yml with the receivers' URLs read from the
  Secret inkwell-secrets.

After editing this file or a rules file, regenerate and commit the results:

    python monitoring/build.py

tests/deploy checks the committed files equal this script's output, and evaluates every
query and rule against a real Prometheus scraping the real components.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

MONITORING = Path(__file__).resolve().parent
# A script, not a package: the checkout's own core and components, for the metric names they
# export (`inkwell.contract` and each component's metrics module), never copied here.
sys.path.insert(0, str(MONITORING.parent))
from inkwell import contract  # noqa: E402
from router import metrics as router_metrics  # noqa: E402
from service import metrics as service_metrics  # noqa: E402
from trainer import metrics as trainer_metrics  # noqa: E402

OUT_DIR = MONITORING / "grafana" / "dashboards"
RULES_DIR = MONITORING / "prometheus" / "rules"
PROMETHEUS_RULE = (
    MONITORING.parent / "k8s" / "components" / "prometheus-operator" / "inkwell-prometheusrule.yaml"
)
ALERTMANAGER_FILE = MONITORING / "alertmanager" / "alertmanager.yml"
ALERTMANAGER_CONFIG = PROMETHEUS_RULE.parent / "inkwell-alertmanagerconfig.yaml"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Request series without probes and scrapes: what users and the router actually send.
USER_ROUTES = 'route!~"/healthz|/readyz|/metrics|/v2/health/.*"'
SCHEMA_VERSION = 39
# Every series a panel reads is scoped to the install picked in the `$namespace` variable
# (Kubernetes namespace; "All" also matches Compose's series, which have no namespace).
SCOPE = 'namespace=~"$namespace"'
# A metric name (optionally `level:` prefixed recording rule) not followed by `(` (a function),
# with its selector if any; string literals are skipped by the alternation's first branch.
_METRIC = re.compile(
    r'(?P<string>"[^"]*")'
    r"|(?<![\w:])(?P<name>(?:[a-z_]+:)?(?:inkwell_[a-z0-9_:]*|process_[a-z_]+|up))"
    r"(?![\w:(])(?P<selector>\{[^}]*\})?"
)
WIDTH = 24


@dataclass(frozen=True)
class Query:
    """One PromQL query of a panel and how its series are named."""

    expr: str
    legend: str = ""
    instant: bool = False


@dataclass(frozen=True)
class Panel:
    """A panel: type, title, queries, unit and size; `core` panels must show data in tests."""

    kind: str
    title: str
    queries: tuple[Query, ...]
    description: str
    unit: str = "short"
    width: int = 12
    height: int = 8
    core: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)


def scoped(expr: str) -> str:
    """`expr` with the install matcher `SCOPE` added to every series selector."""

    def add(match: re.Match[str]) -> str:
        if match["string"] is not None:
            return match["string"]
        selector = match["selector"]
        if selector is None or selector == "{}":
            return f"{match['name']}{{{SCOPE}}}"
        return f"{match['name']}{{{SCOPE}, {selector[1:]}"

    return _METRIC.sub(add, expr)


def _q(expr: str, legend: str = "", *, instant: bool = False) -> Query:
    return Query(scoped(" ".join(expr.split())), legend, instant)


def stat(title: str, *queries: Query, description: str, unit: str = "short", **kw: Any) -> Panel:
    """A single-value panel showing the latest value (or the series name, e.g. a phase)."""
    options = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "textMode": kw.pop("text_mode", "auto"),
        "colorMode": "value",
        "graphMode": "none",
        "justifyMode": "auto",
        "orientation": "auto",
    }
    kw = {"width": 6, "height": 4, **kw}
    return Panel("stat", title, queries, description, unit, options=options, **kw)


def timeseries(
    title: str, *queries: Query, description: str, unit: str = "short", **kw: Any
) -> Panel:
    """A line chart over time."""
    options = {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    defaults = {"custom": {"lineWidth": 1, "fillOpacity": 10, "spanNulls": False}}
    return Panel(
        "timeseries", title, queries, description, unit, options=options, defaults=defaults, **kw
    )


def state_timeline(title: str, *queries: Query, description: str, **kw: Any) -> Panel:
    """Which state held when: rollout phase, served model version."""
    options = {
        "mergeValues": True,
        "showValue": "never",
        "alignValue": "left",
        "rowHeight": 0.9,
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "single", "sort": "none"},
    }
    defaults = {
        "color": {"mode": "thresholds"},
        "thresholds": {
            "mode": "absolute",
            "steps": [{"color": "transparent", "value": None}, {"color": "green", "value": 1}],
        },
    }
    return Panel(
        "state-timeline", title, queries, description, options=options, defaults=defaults, **kw
    )


def bars(title: str, *queries: Query, description: str, unit: str = "short", **kw: Any) -> Panel:
    """Horizontal bars, one per series (e.g. per reason), over the dashboard's time range."""
    options = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "orientation": "horizontal",
        "displayMode": "gradient",
        "showUnfilled": True,
    }
    return Panel("bargauge", title, queries, description, unit, options=options, **kw)


def table(title: str, *queries: Query, description: str, **kw: Any) -> Panel:
    """Instant values as a table: one row per label set."""
    options = {"showHeader": True, "cellHeight": "sm"}
    return Panel("table", title, queries, description, options=options, **kw)


# ---- dashboards ---------------------------------------------------------------------------


def rollout_panels() -> list[tuple[str, list[Panel]]]:
    """Rollout overview: weights, state, and canary against stable on every analysis signal."""
    return [
        (
            "Rollout",
            [
                stat(
                    "Rollout phase",
                    _q(
                        f"max by (phase) ({router_metrics.ROLLOUT_PHASE}) == 1",
                        "{{phase}}",
                        instant=True,
                    ),
                    description="The rollout controller's state: idle, canary (stepping), "
                    "paused, promoting, rolling_back, promoted, rolled_back.",
                    text_mode="name",
                    core=True,
                ),
                stat(
                    "Canary weight",
                    _q(f"max({router_metrics.CANARY_WEIGHT})", "weight"),
                    description="Percent of users the router sends to the canary.",
                    unit="percent",
                    core=True,
                ),
                stat(
                    "Rollout step",
                    _q(f"max({router_metrics.ROLLOUT_STEP})", "step"),
                    description="Index of the current step in INKWELL_ROUTER_ROLLOUT_STEPS "
                    "(-1: no rollout).",
                    core=True,
                ),
                stat(
                    "Versions served",
                    _q(
                        f"max by (variant, model_version) ({contract.MODEL_INFO}) == 1",
                        "{{variant}} v{{model_version}}",
                        instant=True,
                    ),
                    description="The registry version each variant serves right now.",
                    text_mode="name",
                    core=True,
                ),
                state_timeline(
                    "Rollout phase over time",
                    _q(f"max by (phase) ({router_metrics.ROLLOUT_PHASE})", "{{phase}}"),
                    description="1 while the controller is in the phase.",
                    core=True,
                ),
                timeseries(
                    "Canary weight over time",
                    _q(f"max({router_metrics.CANARY_WEIGHT})", "canary weight"),
                    description="Steps up at each passed analysis; drops to 0 on rollback.",
                    unit="percent",
                    core=True,
                ),
            ],
        ),
        (
            "Canary against stable",
            [
                timeseries(
                    "Error rate by variant",
                    _q(
                        "variant:inkwell_router_upstream_errors:ratio_rate5m",
                        "{{variant}}",
                    ),
                    description="Share of live requests the router sent to each variant that "
                    "failed (5xx, timeout, refused). Failed canary requests are retried on "
                    "stable, so clients do not see them.",
                    unit="percentunit",
                    core=True,
                ),
                timeseries(
                    "p95 latency by variant",
                    _q("variant:inkwell_router_upstream_latency_seconds:p95_5m", "{{variant}}"),
                    description="95th percentile of the latency the router measured per variant.",
                    unit="s",
                    core=True,
                ),
                timeseries(
                    "Mean confidence by variant",
                    _q("variant:inkwell_service_prediction_confidence:mean5m", "{{variant}}"),
                    description="Mean probability of the predicted digit.",
                    unit="percentunit",
                    core=True,
                ),
                timeseries(
                    "Online accuracy by variant (delayed labels, 1 h)",
                    _q("variant:inkwell_router_online_accuracy:ratio_rate1h", "{{variant}}"),
                    description="Of the served predictions later labelled by an upload, the "
                    "share that was right.",
                    unit="percentunit",
                ),
                timeseries(
                    "Shadow agreement",
                    _q("inkwell_router_shadow_agreement:ratio_rate15m", "agreement"),
                    description="In shadow mode: share of requests where canary and stable "
                    "predicted the same digit.",
                    unit="percentunit",
                ),
                timeseries(
                    "Requests by answering variant",
                    _q("variant:inkwell_router_requests:rate5m", "{{variant}}"),
                    description="Client requests through the router per second, by the variant "
                    "that answered.",
                    unit="reqps",
                    core=True,
                ),
                timeseries(
                    "Fallbacks to stable and breaker",
                    _q(
                        "sum by (reason) "
                        f"(rate({router_metrics.FALLBACKS}_total[$__rate_interval]))",
                        "fallback: {{reason}}",
                    ),
                    _q(
                        f"max by (variant) ({router_metrics.CIRCUIT_OPEN})",
                        "breaker open: {{variant}}",
                    ),
                    description="Canary failures answered by stable, and whether the circuit "
                    "breaker is open (1).",
                ),
                timeseries(
                    "Analyses and transitions",
                    _q(
                        "sum by (result) "
                        f"(increase({router_metrics.ROLLOUT_ANALYSES}_total[$__rate_interval]))",
                        "analysis {{result}}",
                    ),
                    _q(
                        "sum by (to) "
                        f"(increase({router_metrics.ROLLOUT_TRANSITIONS}_total[$__rate_interval]))",
                        "to {{to}}",
                    ),
                    description="Canary analyses by result, and phase changes.",
                ),
            ],
        ),
        ("Cheque rollout", cheque_rollout_panels()),
    ]


def cheque_rollout_panels() -> list[Panel]:
    """The cheque reader's own rollout: `/v1/cheques/*` split by cheque model version."""
    upstream = f"{router_metrics.CHEQUE_UPSTREAM_REQUESTS}_total"
    reads = f"{contract.CHEQUE_READS}_total"
    confidence = contract.CHEQUE_CONFIDENCE
    return [
        stat(
            "Cheque rollout phase",
            _q(
                f"max by (phase) ({router_metrics.CHEQUE_ROLLOUT_PHASE}) == 1",
                "{{phase}}",
                instant=True,
            ),
            description="The controller's state for the inkwell-cheques canary (absent while "
            "the cheque rollout is off).",
            text_mode="name",
            width=6,
        ),
        stat(
            "Cheque canary weight",
            _q(f"max({router_metrics.CHEQUE_CANARY_WEIGHT})", "weight"),
            description="Percent of users whose cheque reads the cheque canary answers.",
            unit="percent",
            width=6,
        ),
        stat(
            "Cheque versions served",
            _q(
                f"max by (variant, model_version) ({service_metrics.CHEQUE_MODEL_INFO}) == 1",
                "{{variant}} v{{model_version}}",
                instant=True,
            ),
            description="The inkwell-cheques version each variant serves right now.",
            text_mode="name",
            width=12,
        ),
        timeseries(
            "Cheque error rate by variant",
            _q(
                f'sum by (variant) (rate({upstream}{{mode="live", '
                f'outcome!~"ok|client_error"}}[$__rate_interval])) / sum by (variant) '
                f'(rate({upstream}{{mode="live"}}[$__rate_interval]))',
                "{{variant}}",
            ),
            description="Share of live cheque reads the router sent to each variant that failed "
            "(5xx, timeout, refused).",
            unit="percentunit",
        ),
        timeseries(
            "Cheque p95 latency by variant",
            _q(
                "histogram_quantile(0.95, sum by (variant, le) "
                f"(rate({router_metrics.CHEQUE_UPSTREAM_LATENCY}_bucket[$__rate_interval])))",
                "{{variant}}",
            ),
            description="95th percentile of the cheque-read latency the router measured.",
            unit="s",
        ),
        timeseries(
            "Cheque needs-review rate by variant",
            _q(
                f'sum by (variant) (rate({reads}{{needs_review="true"}}[$__rate_interval])) '
                f"/ sum by (variant) (rate({reads}[$__rate_interval]))",
                "{{variant}}",
            ),
            description="Share of amounts each variant flagged for human review.",
            unit="percentunit",
        ),
        timeseries(
            "Cheque mean confidence by variant",
            _q(
                f"sum by (variant) (rate({confidence}_sum[$__rate_interval])) "
                f"/ sum by (variant) (rate({confidence}_count[$__rate_interval]))",
                "{{variant}}",
            ),
            description="Mean calibrated confidence of the amounts each variant read.",
            unit="percentunit",
        ),
        timeseries(
            "Cheque online exact-amount accuracy (reviews, 1 h)",
            _q("variant:inkwell_service_cheque_exact_amounts:ratio_rate1h", "{{variant}}"),
            description="Of the readings a later accepted review scored, the share read "
            "exactly right (delayed labels), by the variant that read them.",
            unit="percentunit",
            width=24,
        ),
    ]


def model_panels() -> list[tuple[str, list[Panel]]]:
    """Model history: which version served when, reloads, promotions and rollbacks."""
    return [
        (
            "Versions",
            [
                state_timeline(
                    "Served version by variant",
                    _q(
                        f"max by (variant, model_version) ({contract.MODEL_INFO})",
                        "{{variant}} v{{model_version}}",
                    ),
                    description="Which registry version each variant served over time.",
                    width=24,
                    core=True,
                ),
                timeseries(
                    "Model reloads",
                    _q(
                        "sum by (variant, model_version) "
                        f"(increase({service_metrics.MODEL_RELOADS}_total[$__rate_interval]))",
                        "{{variant}} v{{model_version}}",
                    ),
                    description="Hot swaps after the alias moved (the first load included).",
                    core=True,
                ),
                timeseries(
                    "Promotions and rollbacks",
                    _q(
                        f"sum by (to) (increase({router_metrics.ROLLOUT_TRANSITIONS}_total"
                        '{to=~"promoted|rolled_back"}[$__rate_interval]))',
                        "{{to}}",
                    ),
                    description="Rollout outcomes.",
                ),
            ],
        ),
        (
            "Retraining and the gate",
            [
                bars(
                    "Gate results",
                    _q(
                        f"sum by (outcome) (increase({trainer_metrics.RETRAINS}_total[$__range]))",
                        "{{outcome}}",
                        instant=True,
                    ),
                    description="Retrains over the time range: passed the gate (registered as "
                    "canary), rejected by the gate (recorded, not aliased), failed, skipped.",
                    core=True,
                ),
                timeseries(
                    "Candidate accuracy (forgetting)",
                    _q(f"max by (dataset) ({trainer_metrics.CANDIDATE_ACCURACY})", "{{dataset}}"),
                    description="The last candidate's accuracy: mnist_test is the original task "
                    "(a fall is forgetting; the gate allows INKWELL_TRAINER_GATE_MAX_OLD_DROP_PP), "
                    "holdout is the new users' held-out samples.",
                    unit="percentunit",
                    core=True,
                ),
                stat(
                    "Last candidate version",
                    _q(f"max({trainer_metrics.LAST_VERSION})", "version"),
                    description="Registry version of the last candidate, passed or rejected.",
                ),
                stat(
                    "Retrain running",
                    _q(f"max({trainer_metrics.RUNNING})", "running"),
                    description="1 while a retrain runs (one at a time).",
                    core=True,
                ),
                timeseries(
                    "Retrains by outcome",
                    _q(
                        "sum by (outcome) "
                        f"(increase({trainer_metrics.RETRAINS}_total[$__rate_interval]))",
                        "{{outcome}}",
                    ),
                    description="When retrains finished, by outcome.",
                ),
                timeseries(
                    "Retrain duration",
                    *(
                        _q(
                            f"histogram_quantile({q}, sum by (le) "
                            f"(increase({trainer_metrics.RETRAIN_SECONDS}_bucket[1h])))",
                            f"p{round(q * 100)}",
                        )
                        for q in (0.5, 0.95)
                    ),
                    description="Wall time from trigger to registered candidate, last hour.",
                    unit="s",
                ),
                timeseries(
                    "Replay buffer and watermark",
                    _q(f"max({trainer_metrics.BUFFER_SIZE})", "buffer items"),
                    _q(f"max({trainer_metrics.WATERMARK})", "watermark (sample id)"),
                    description="Replay-buffer size after the last retrain, and the highest "
                    "sample id trained on.",
                ),
            ],
        ),
    ]


def data_panels() -> list[tuple[str, list[Panel]]]:
    """Data: uploads, rejections, what is predicted."""
    return [
        (
            "Uploads",
            [
                timeseries(
                    "Labelled uploads",
                    _q(
                        "sum by (created) "
                        f"(rate({service_metrics.SAMPLES_ACCEPTED}_total[$__rate_interval]))",
                        "created={{created}}",
                    ),
                    description="Samples stored per second; created=false are duplicates or "
                    "idempotent replays.",
                    unit="reqps",
                    core=True,
                ),
                bars(
                    "Rejected uploads by reason",
                    _q(
                        "sum by (reason) "
                        f"(increase({service_metrics.SAMPLES_REJECTED}_total[$__range]))",
                        "{{reason}}",
                        instant=True,
                    ),
                    description="Uploads refused with a 4xx over the time range, by error code.",
                ),
                bars(
                    "Quarantined by reason",
                    _q(
                        "sum by (reason) "
                        f"(increase({trainer_metrics.QUARANTINED}_total[$__range]))",
                        "{{reason}}",
                        instant=True,
                    ),
                    description="Samples the trainer's data validation set aside over the time "
                    "range (blank, duplicate, not digit-like, label conflict, user "
                    "disagreement, gate rejected...).",
                    core=True,
                ),
                timeseries(
                    "Quarantine share of new uploads",
                    _q(
                        "reason:inkwell_trainer_quarantined_samples:ratio_increase30m", "{{reason}}"
                    ),
                    description="Quarantined samples per reason against new uploads, last 30 "
                    "minutes; the InkwellQuarantineSpike alert fires above 20 %.",
                    unit="percentunit",
                ),
                timeseries(
                    "Pending and trained samples",
                    _q(f"max({trainer_metrics.PENDING})", "pending"),
                    _q(
                        f"sum(increase({trainer_metrics.TRAINED}_total[$__rate_interval]))",
                        "trained",
                    ),
                    description="Accepted uploads waiting for the next retrain, and new samples "
                    "used by retrains.",
                    core=True,
                ),
                timeseries(
                    "Predictions by digit",
                    _q(
                        "sum by (digit) "
                        f"(rate({service_metrics.PREDICTIONS}_total[$__rate_interval]))",
                        "{{digit}}",
                    ),
                    description="What the models answer; a shift can mean drift in the input.",
                    unit="reqps",
                    core=True,
                ),
            ],
        ),
    ]


def serving_panels() -> list[tuple[str, list[Panel]]]:
    """Serving: throughput, latency, batching, readiness, reloads, resources."""
    return [
        (
            "Throughput and latency",
            [
                timeseries(
                    "Requests by variant and route",
                    _q(
                        "sum by (variant, route) "
                        f"(rate({service_metrics.REQUESTS}_total{{{USER_ROUTES}}}[$__rate_interval]))",
                        "{{variant}} {{route}}",
                    ),
                    description="Requests per second each service answered (probes excluded).",
                    unit="reqps",
                    core=True,
                ),
                timeseries(
                    "Latency percentiles",
                    *(
                        _q(
                            f"histogram_quantile({q}, sum by (variant, le) "
                            f"(rate({service_metrics.REQUEST_DURATION}_bucket"
                            f"{{{USER_ROUTES}}}[$__rate_interval])))",
                            f"{{{{variant}}}} p{round(q * 100)}",
                        )
                        for q in (0.5, 0.95, 0.99)
                    ),
                    description="Service-side latency (decode, queue, batch, forward pass).",
                    unit="s",
                    core=True,
                ),
                timeseries(
                    "Server errors",
                    _q("variant:inkwell_service_errors:ratio_rate5m", "{{variant}}"),
                    description="Share of requests answered with 5xx (client errors excluded).",
                    unit="percentunit",
                    core=True,
                ),
                timeseries(
                    "Router overhead (p50)",
                    _q(
                        "histogram_quantile(0.5, sum by (le) "
                        f"(rate({router_metrics.REQUEST_LATENCY}_bucket[$__rate_interval])))",
                        "through the router",
                    ),
                    _q(
                        "histogram_quantile(0.5, sum by (le) "
                        f"(rate({router_metrics.UPSTREAM_LATENCY}_bucket[$__rate_interval])))",
                        "service (as the router sees it)",
                    ),
                    description="Median client latency through the router against the median "
                    "upstream latency: the difference is the router's cost.",
                    unit="s",
                ),
            ],
        ),
        (
            "Batching and models",
            [
                timeseries(
                    "Micro-batch size",
                    _q("variant:inkwell_service_batch_size:mean5m", "{{variant}} mean"),
                    _q(
                        "histogram_quantile(0.95, sum by (variant, le) "
                        f"(rate({service_metrics.BATCH_SIZE}_bucket[$__rate_interval])))",
                        "{{variant}} p95",
                    ),
                    description="Images per forward pass: above 1 means concurrent requests "
                    "are being combined.",
                    core=True,
                ),
                timeseries(
                    "Ready and reloads",
                    _q(f"max by (variant) ({contract.READY})", "{{variant}} ready"),
                    _q(
                        "sum by (variant) "
                        f"(increase({service_metrics.MODEL_RELOADS}_total[$__rate_interval]))",
                        "{{variant}} reloads",
                    ),
                    _q(
                        "sum by (variant, reason) "
                        f"(increase({service_metrics.MODEL_LOAD_FAILURES}_total[$__rate_interval]))",
                        "{{variant}} load failure: {{reason}}",
                    ),
                    description="Whether each variant has a model (1), its reloads and failed "
                    "loads.",
                    core=True,
                ),
            ],
        ),
        (
            "Processes",
            [
                timeseries(
                    "CPU",
                    _q(
                        "sum by (job) "
                        '(rate(process_cpu_seconds_total{job=~"inkwell-.*"}[$__rate_interval]))',
                        "{{job}}",
                    ),
                    description="CPU seconds per second per component.",
                    unit="short",
                    core=True,
                ),
                timeseries(
                    "Resident memory",
                    _q(
                        'sum by (job) (process_resident_memory_bytes{job=~"inkwell-.*"})',
                        "{{job}}",
                    ),
                    description="Resident set size per component.",
                    unit="bytes",
                    core=True,
                ),
            ],
        ),
    ]


DASHBOARDS: dict[str, tuple[str, str, Any]] = {
    "inkwell-rollout": (
        "Inkwell / Rollout overview",
        "Canary weight and phase, and the canary against stable on every analysis signal.",
        rollout_panels,
    ),
    "inkwell-models": (
        "Inkwell / Model history",
        "Which version served when, retrains, gate results and forgetting.",
        model_panels,
    ),
    "inkwell-data": (
        "Inkwell / Data",
        "Uploads, quarantine reasons, pending samples, rejected uploads and what is predicted.",
        data_panels,
    ),
    "inkwell-serving": (
        "Inkwell / Serving",
        "Throughput, latency, micro-batching, readiness, reloads and resources.",
        serving_panels,
    ),
}


# ---- rendering ----------------------------------------------------------------------------


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    targets = []
    for i, query in enumerate(panel.queries):
        target: dict[str, Any] = {
            "datasource": DATASOURCE,
            "expr": query.expr,
            "legendFormat": query.legend or "__auto",
            "refId": chr(ord("A") + i),
            "range": not query.instant,
            "instant": query.instant,
        }
        targets.append(target)
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit, **panel.defaults}, "overrides": []},
        "options": panel.options,
        "targets": targets,
    }


def build(uid: str) -> dict[str, Any]:
    """One dashboard as Grafana JSON, panels laid out left to right, rows top to bottom."""
    title, description, sections = DASHBOARDS[uid]
    panels: list[dict[str, Any]] = []
    panel_id, y = 1, 0
    for row_title, row_panels in sections():
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": y},
                "panels": [],
            }
        )
        panel_id, y = panel_id + 1, y + 1
        x, row_height = 0, 0
        for panel in row_panels:
            if x + panel.width > WIDTH:
                x, y, row_height = 0, y + row_height, 0
            panels.append(_panel_json(panel, panel_id, x, y))
            panel_id += 1
            x += panel.width
            row_height = max(row_height, panel.height)
        y += row_height
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["inkwell"],
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "links": [
            {
                "type": "dashboards",
                "tags": ["inkwell"],
                "asDropdown": True,
                "title": "Inkwell dashboards",
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                },
                {
                    "name": "namespace",
                    "label": "Install (namespace)",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "query": {
                        "query": f"label_values({contract.READY}, namespace)",
                        "refId": "namespace",
                    },
                    "definition": f"label_values({contract.READY}, namespace)",
                    "includeAll": True,
                    "allValue": ".*",
                    "multi": False,
                    "current": {"selected": True, "text": "All", "value": "$__all"},
                    "hide": 0,
                    "refresh": 2,
                    "sort": 1,
                    "regex": "",
                },
            ]
        },
        "annotations": {
            "list": [
                {
                    "name": "Rollout transitions",
                    "datasource": DATASOURCE,
                    "enable": True,
                    "iconColor": "orange",
                    "expr": scoped(
                        f"sum by (to) (changes({router_metrics.ROLLOUT_TRANSITIONS}_total[1m])) > 0"
                    ),
                    "titleFormat": "rollout: {{to}}",
                    "step": "60s",
                }
            ]
        },
        "panels": panels,
    }


def core_panels() -> dict[str, list[str]]:
    """Titles of the panels that must show data once the system has served traffic (tests)."""
    return {
        uid: [panel.title for _, row in sections() for panel in row if panel.core]
        for uid, (_, _, sections) in DASHBOARDS.items()
    }


def render(uid: str) -> str:
    """The dashboard's file content: stable key order, two-space indent, final newline."""
    return json.dumps(build(uid), indent=2, sort_keys=True) + "\n"


# ---- PrometheusRule ------------------------------------------------------------------------

PROMETHEUS_RULE_HEADER = """\
# Inkwell's alert and recording rules for the prometheus-operator (kube-prometheus-stack).
# GENERATED by `python monitoring/build.py` from monitoring/prometheus/rules/*.yml, the one
# source of the rules: edit those, never this file (tests/deploy fails when they differ).
# The `release` label must match your Prometheus's ruleSelector (kube-prometheus-stack: the
# Helm release name).
"""


# The operator's resources: `release` must match the selectors of the operator's Prometheus and
# Alertmanager (kube-prometheus-stack: the Helm release name).
OPERATOR_METADATA = {
    "name": "inkwell",
    "labels": {
        "app.kubernetes.io/name": "inkwell",
        "app.kubernetes.io/component": "monitoring",
        "release": "kube-prometheus-stack",
    },
}


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (PromQL) as literal blocks, as a person would."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def rule_groups() -> list[dict[str, Any]]:
    """Every rule group of the rules files, in file-name order."""
    groups: list[dict[str, Any]] = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        groups.extend(yaml.safe_load(path.read_text())["groups"])
    return groups


def render_prometheus_rule() -> str:
    """The PrometheusRule manifest holding exactly the groups of the rules files."""
    manifest = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": OPERATOR_METADATA,
        "spec": {"groups": rule_groups()},
    }
    body = yaml.dump(manifest, Dumper=_BlockDumper, sort_keys=False, width=100)
    return PROMETHEUS_RULE_HEADER + body


ALERTMANAGER_HEADER = """\
# Inkwell's Alertmanager routes for the prometheus-operator: an AlertmanagerConfig the operator
# merges into the Alertmanager it runs (kube-prometheus-stack). GENERATED by
# `python monitoring/build.py` from monitoring/alertmanager/alertmanager.yml, the one source of
# the routes (Compose loads that file as it is): edit it, never this file (tests/deploy fails
# when they differ). The operator scopes these routes to alerts of this namespace. Each
# receiver's webhook URL is read from the Secret inkwell-secrets (keys alert-*-webhook-url in
# k8s/overlays/prod/secrets.env), never written here. Needs: an Alertmanager whose
# alertmanagerConfigSelector matches the `release` label (kube-prometheus-stack:
# alertmanager.alertmanagerSpec.alertmanagerConfigSelector) and the operator's CRDs.
"""
# The Secret holding the receivers' URLs: the one kustomize generates for prod.
RECEIVER_SECRET = "inkwell-secrets"
# `name="value"` with =, !=, =~ or !~; the value a double-quoted string (escapes allowed).
_MATCHER = re.compile(r'^\s*([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*$')
# Alertmanager's route fields and the AlertmanagerConfig's names for them.
ROUTE_FIELDS = {
    "receiver": "receiver",
    "group_by": "groupBy",
    "group_wait": "groupWait",
    "group_interval": "groupInterval",
    "repeat_interval": "repeatInterval",
    "continue": "continue",
}


def crd_matcher(text: str) -> dict[str, str]:
    """Alertmanager's `name="value"` matcher as the AlertmanagerConfig's {name, value,
    matchType}; equality, the default, is left implicit (kustomize writes a bare `=`, which
    YAML 1.1 readers take for a tag, not a string)."""
    found = _MATCHER.match(text)
    if found is None:
        raise ValueError(f"not a matcher this build understands: {text!r}")
    name, kind, value = found.groups()
    matcher = {"name": name, "value": value}
    if kind != "=":
        matcher["matchType"] = kind
    return matcher


def crd_route(route: dict[str, Any]) -> dict[str, Any]:
    """One route (and its children) in the AlertmanagerConfig's spelling."""
    unknown = set(route) - {*ROUTE_FIELDS, "matchers", "routes"}
    if unknown:
        raise ValueError(f"route fields this build does not translate: {sorted(unknown)}")
    out: dict[str, Any] = {ROUTE_FIELDS[k]: v for k, v in route.items() if k in ROUTE_FIELDS}
    if "matchers" in route:
        out["matchers"] = [crd_matcher(m) for m in route["matchers"]]
    if "routes" in route:
        out["routes"] = [crd_route(child) for child in route["routes"]]
    return out


def receiver_secret_key(url: str, receivers: list[dict[str, Any]]) -> str:
    """The Secret key of a webhook URL: named after the first receiver that uses it, so two
    receivers sending to one URL read one key (alert-pager-webhook-url, ...)."""
    for receiver in receivers:
        if any(hook["url"] == url for hook in receiver.get("webhook_configs", [])):
            return f"alert-{receiver['name'].removeprefix('inkwell-')}-webhook-url"
    raise ValueError(f"no receiver sends to {url}")


def crd_receiver(receiver: dict[str, Any], receivers: list[dict[str, Any]]) -> dict[str, Any]:
    """A receiver whose webhook URLs come from RECEIVER_SECRET."""
    unknown = set(receiver) - {"name", "webhook_configs"}
    if unknown:
        raise ValueError(f"receiver fields this build does not translate: {sorted(unknown)}")
    hooks = []
    for hook in receiver.get("webhook_configs", []):
        key = receiver_secret_key(hook["url"], receivers)
        out: dict[str, Any] = {"urlSecret": {"name": RECEIVER_SECRET, "key": key}}
        if "send_resolved" in hook:
            out["sendResolved"] = hook["send_resolved"]
        hooks.append(out)
    return {"name": receiver["name"], "webhookConfigs": hooks}


def render_alertmanager_config() -> str:
    """The AlertmanagerConfig with the routes, inhibitions and receivers of alertmanager.yml."""
    config = yaml.safe_load(ALERTMANAGER_FILE.read_text())
    receivers = config["receivers"]
    inhibit = [
        {
            "sourceMatch": [crd_matcher(m) for m in rule["source_matchers"]],
            "targetMatch": [crd_matcher(m) for m in rule["target_matchers"]],
            "equal": rule["equal"],
        }
        for rule in config.get("inhibit_rules", [])
    ]
    manifest = {
        "apiVersion": "monitoring.coreos.com/v1alpha1",
        "kind": "AlertmanagerConfig",
        "metadata": OPERATOR_METADATA,
        "spec": {
            "route": crd_route(config["route"]),
            "inhibitRules": inhibit,
            "receivers": [crd_receiver(r, receivers) for r in receivers],
        },
    }
    body = yaml.dump(manifest, Dumper=_BlockDumper, sort_keys=False, width=100)
    return ALERTMANAGER_HEADER + body


def outputs() -> dict[Path, str]:
    """Every derived file and the content it must have."""
    files = {OUT_DIR / f"{uid}.json": render(uid) for uid in DASHBOARDS}
    files[PROMETHEUS_RULE] = render_prometheus_rule()
    files[ALERTMANAGER_CONFIG] = render_alertmanager_config()
    return files


def main() -> int:
    """Write every derived file; print what changed."""
    for path, text in outputs().items():
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
