"""The Grafana dashboards, written as code with Grafana's own grafana-foundation-sdk.

    python grafana/dashboards.py           # regenerate grafana/dashboards/*.json
    python grafana/dashboards.py --check   # fail if the JSON is not what this file generates

Every query uses the `model` template variable and the provisioned Prometheus datasource (uid
`prometheus`). tests/e2e/test_monitoring.py runs every query against a real Prometheus.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

OUT = Path(__file__).parent / "dashboards"
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="prometheus")
M = 'model=~"$model"'
RATE = "$__rate_interval"

Query = tuple[str, str]
"""A PromQL expression and its legend."""


def query(expr: str, legend: str, ref: str) -> prometheus.Dataquery:
    return (
        prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)
    )


def bottom_legend() -> common_builders.VizLegendOptions:
    return (
        common_builders.VizLegendOptions()
        .display_mode(common.LegendDisplayMode.LIST)
        .placement(common.LegendPlacement.BOTTOM)
        .show_legend(True)
    )


def graph(title: str, unit: str, queries: list[Query], description: str = "") -> Builder:
    panel = (
        timeseries.Panel()
        .title(title)
        .unit(unit)
        .datasource(DATASOURCE)
        .height(8)
        .span(12)
        .description(description)
        .legend(bottom_legend())
    )
    for index, (expr, legend) in enumerate(queries):
        panel = panel.with_target(query(expr, legend, chr(ord("A") + index)))
    return panel


def single(title: str, unit: str, expr: str) -> Builder:
    return (
        stat.Panel()
        .title(title)
        .unit(unit)
        .datasource(DATASOURCE)
        .height(4)
        .span(6)
        .graph_mode(common.BigValueGraphMode.AREA)
        .color_mode(common.BigValueColorMode.VALUE)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
        .with_target(query(expr, "", "A"))
    )


def quantiles(metric: str, by: str, selector: str = M) -> list[Query]:
    return [
        (
            f"histogram_quantile({q}, sum by ({by}, le) "
            f"(rate({metric}_bucket{{{selector}}}[{RATE}])))",
            f"p{round(q * 100)} {{{{{by}}}}}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def base(uid: str, title: str) -> db.Dashboard:
    variable = (
        db.QueryVariable("model")
        .label("Model")
        .datasource(DATASOURCE)
        .query("label_values(balancer_requests_total, model)")
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
    )
    return (
        db.Dashboard(title)
        .uid(uid)
        .tags(["llm-balancer"])
        .refresh("10s")
        .time("now-30m", "now")
        .timezone("browser")
        .with_variable(variable)
    )


def overview() -> db.Dashboard:
    return (
        base("llm-balancer-overview", "LLM balancer: overview")
        .with_panel(
            single(
                "Requests per second", "reqps", f"sum(rate(balancer_requests_total{{{M}}}[{RATE}]))"
            )
        )
        .with_panel(
            single(
                "Error ratio (5xx)",
                "percentunit",
                f"sum(model:balancer_errors:ratio_rate1m{{{M}}})",
            )
        )
        .with_panel(
            single(
                "Output tokens per second",
                "short",
                f"sum(rate(balancer_output_tokens_total{{{M}}}[{RATE}]))",
            )
        )
        .with_panel(
            single(
                "Balancer overhead p99",
                "s",
                f"histogram_quantile(0.99, sum by (le) "
                f"(rate(balancer_overhead_seconds_bucket{{{M}}}[{RATE}])))",
            )
        )
        .with_row(db.Row("Traffic"))
        .with_panel(
            graph(
                "Requests per second by model",
                "reqps",
                [(f"sum by (model) (rate(balancer_requests_total{{{M}}}[{RATE}]))", "{{model}}")],
            )
        )
        .with_panel(
            graph(
                "Requests per second by endpoint",
                "reqps",
                [
                    (
                        f"sum by (endpoint) (rate(balancer_requests_total{{{M}}}[{RATE}]))",
                        "{{endpoint}}",
                    )
                ],
                "Chat, responses, images, audio, rerank, score...; `other`: the /v1/ pass-through.",
            )
        )
        .with_panel(
            graph(
                "Error ratio by model",
                "percentunit",
                [(f"model:balancer_errors:ratio_rate1m{{{M}}}", "{{model}}")],
                "Share of requests answered with a 5xx (recording rule, 1m window).",
            )
        )
        .with_panel(
            graph(
                "Requests by status code",
                "reqps",
                [(f"sum by (code) (rate(balancer_requests_total{{{M}}}[{RATE}]))", "{{code}}")],
            )
        )
        .with_panel(
            graph(
                "Retries and panic routing",
                "ops",
                [
                    (
                        f"sum by (reason) (rate(balancer_retries_total{{{M}}}[{RATE}]))",
                        "retry: {{reason}}",
                    ),
                    (
                        f"sum by (model) (rate(balancer_panic_total{{{M}}}[{RATE}]))",
                        "panic: {{model}}",
                    ),
                ],
            )
        )
        .with_row(db.Row("Latency"))
        .with_panel(
            graph("Request latency", "s", quantiles("balancer_request_duration_seconds", "model"))
        )
        .with_panel(
            graph(
                "Time to first token (streams)",
                "s",
                quantiles("balancer_time_to_first_token_seconds", "model"),
            )
        )
        .with_panel(
            graph(
                "Balancer overhead",
                "s",
                quantiles("balancer_overhead_seconds", "model"),
                "The balancer's own time per request, without the workers'.",
            )
        )
        .with_row(db.Row("Tokens"))
        .with_panel(
            graph(
                "Output tokens per second by model",
                "short",
                [
                    (
                        f"sum by (model) (rate(balancer_output_tokens_total{{{M}}}[{RATE}]))",
                        "{{model}}",
                    )
                ],
            )
        )
        .with_panel(
            graph(
                "Generation speed per request (tokens/s)",
                "short",
                quantiles("balancer_output_tokens_per_second", "model"),
            )
        )
        .with_panel(
            graph(
                "Input tokens per second by model",
                "short",
                [
                    (
                        f"sum by (model) (rate(balancer_input_tokens_total{{{M}}}[{RATE}]))",
                        "{{model}}",
                    )
                ],
            )
        )
    )


def workers() -> db.Dashboard:
    return (
        base("llm-balancer-workers", "LLM balancer: workers")
        .with_panel(
            statetimeline.Panel()
            .title("Worker health (1 = in service, 0 = ejected)")
            .datasource(DATASOURCE)
            .height(8)
            .span(24)
            .legend(bottom_legend())
            .show_value(common.VisibilityMode.NEVER)
            .with_target(
                query(
                    f"max by (model, worker) (balancer_worker_up{{{M}}})",
                    "{{model}} {{worker}}",
                    "A",
                )
            )
        )
        .with_panel(
            graph(
                "Workers by state",
                "short",
                # Every replica reports every worker: count each worker once per state it has
                # on any replica.
                [
                    (
                        "sum by (state) "
                        f"(max by (model, worker, state) (balancer_worker_state{{{M}}}))",
                        "{{state}}",
                    )
                ],
            )
        )
        .with_panel(
            graph(
                "Requests in flight",
                "short",
                [(f"sum by (worker) (balancer_inflight_requests{{{M}}})", "{{worker}}")],
            )
        )
        .with_panel(
            graph(
                "Worker latency p50 (successful attempts)",
                "s",
                [
                    (
                        f"histogram_quantile(0.5, sum by (worker, le) (rate("
                        f'balancer_upstream_duration_seconds_bucket{{{M},outcome="success"}}[{RATE}])))',
                        "{{worker}}",
                    )
                ],
            )
        )
        .with_panel(
            graph(
                "Requests per second by worker",
                "reqps",
                [(f"sum by (worker) (rate(balancer_requests_total{{{M}}}[{RATE}]))", "{{worker}}")],
            )
        )
        .with_panel(
            graph(
                "Ejections",
                "short",
                [
                    (
                        f"sum by (worker, reason) "
                        f"(increase(balancer_ejections_total{{{M}}}[{RATE}]))",
                        "{{worker}} {{reason}}",
                    )
                ],
            )
        )
        .with_panel(
            graph(
                "Failed attempts by cause",
                "ops",
                [
                    (
                        f"sum by (worker, outcome) (rate("
                        f'balancer_upstream_duration_seconds_count{{{M},outcome!="success"}}[{RATE}]))',
                        "{{worker}} {{outcome}}",
                    )
                ],
            )
        )
        .with_panel(
            graph(
                "Probe latency p95",
                "s",
                [
                    (
                        f"histogram_quantile(0.95, sum by (worker, le) (rate("
                        f"balancer_probe_duration_seconds_bucket{{{M}}}[{RATE}])))",
                        "{{worker}}",
                    )
                ],
            )
        )
        .with_panel(
            graph(
                "Probe failures",
                "ops",
                [
                    (
                        f"sum by (worker) (rate(balancer_probe_failures_total{{{M}}}[{RATE}]))",
                        "{{worker}}",
                    )
                ],
            )
        )
    )


DASHBOARDS: dict[str, Callable[[], db.Dashboard]] = {
    "overview.json": overview,
    "workers.json": workers,
}


def render(build: Callable[[], db.Dashboard]) -> str:
    return JSONEncoder(sort_keys=True, indent=2).encode(build().build()) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    OUT.mkdir(exist_ok=True)
    for name, build in DASHBOARDS.items():
        text = render(build)
        json.loads(text)  # valid JSON, or fail loudly
        path = OUT / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
    if stale:
        print("out of date (run python grafana/dashboards.py):", *stale, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
