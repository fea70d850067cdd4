"""deploy/kubernetes/ is what a user applies with `kubectl apply -k`: every manifest is valid
against the Kubernetes schemas, and the probes, ports and environment names are those the
balancer really serves and reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from balancer.config import ENV_PREFIX, Settings, load_settings
from balancer.routing import ROUTES

KUBERNETES = Path(__file__).parents[2] / "deploy" / "kubernetes"
VERSION = "1.30.0"
"""The oldest Kubernetes the manifests are for (the schemas of kubernetes-validate, pinned)."""


def kustomization() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    return data


def resources() -> list[dict[str, Any]]:
    """Every resource the kustomization applies."""
    found = []
    for name in kustomization()["resources"]:
        found += [doc for doc in yaml.safe_load_all((KUBERNETES / name).read_text()) if doc]
    return found


def one(kind: str, name: str) -> dict[str, Any]:
    [found] = [r for r in resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = one("Deployment", "llm-balancer")["spec"]["template"][
        "spec"
    ]["containers"]
    [balancer] = [c for c in containers if c["name"] == "balancer"]
    return balancer


def settings_env() -> dict[str, str]:
    """The balancer's environment: the ConfigMap's and the Secret's."""
    config = one("ConfigMap", "llm-balancer-config")["data"]
    secret = one("Secret", "llm-balancer-secrets")["stringData"]
    return {**config, **secret}


def test_the_kustomization_applies_every_manifest_in_the_folder() -> None:
    listed = set(kustomization()["resources"])
    assert listed == {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.parametrize(
    "resource", resources(), ids=lambda r: f"{r['kind']}/{r['metadata']['name']}"
)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(resource: dict[str, Any]) -> None:
    kubernetes_validate.validate(resource, VERSION, strict=True)


def test_the_probes_are_the_routes_the_balancer_serves() -> None:
    served = {route.path for route in ROUTES if route.method == "GET"}
    balancer = container()
    assert balancer["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert balancer["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"/healthz", "/readyz"} <= served
    annotations = one("Deployment", "llm-balancer")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] in served


def test_the_ports_are_the_one_the_balancer_listens_on() -> None:
    balancer = container()
    [port] = balancer["ports"]
    listens = int(settings_env()["BALANCER_PORT"])
    assert port["containerPort"] == listens
    for probe in ("livenessProbe", "readinessProbe"):
        assert balancer[probe]["httpGet"]["port"] == port["name"]
    [service_port] = one("Service", "llm-balancer")["spec"]["ports"]
    assert service_port["targetPort"] == port["name"]
    annotations = one("Deployment", "llm-balancer")["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == listens
    assert settings_env()["BALANCER_HOST"] == "0.0.0.0"


def test_every_balancer_variable_is_a_setting() -> None:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    named = {name for name in settings_env() if name.startswith(ENV_PREFIX)}
    assert named - known == set()
    assert {"BALANCER_STORE", "BALANCER_ADMIN_TOKEN", "BALANCER_SHUTDOWN_GRACE"} <= named


def test_the_settings_are_ones_the_balancer_accepts() -> None:
    values: dict[str, Any] = {
        name.removeprefix(ENV_PREFIX).lower(): value
        for name, value in settings_env().items()
        if name.startswith(ENV_PREFIX)
    }
    settings = load_settings(overrides=values)
    assert settings.store.startswith("redis://")


def test_the_store_is_the_redis_the_manifests_run() -> None:
    store = urlsplit(settings_env()["BALANCER_STORE"])
    redis = one("Service", "redis")
    [port] = redis["spec"]["ports"]
    assert (store.hostname, store.port) == ("redis", port["port"])
    assert store.password == settings_env()["REDIS_PASSWORD"]
    redis_args = one("StatefulSet", "redis")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--appendonly" in redis_args and "$(REDIS_PASSWORD)" in redis_args


def test_shutdown_lets_requests_in_flight_drain_before_the_kill() -> None:
    pod = one("Deployment", "llm-balancer")["spec"]["template"]["spec"]
    pause = float(container()["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace = float(settings_env()["BALANCER_SHUTDOWN_GRACE"])
    assert pod["terminationGracePeriodSeconds"] > pause + grace


def test_the_disruption_budget_and_service_select_the_replicas() -> None:
    labels = one("Deployment", "llm-balancer")["spec"]["template"]["metadata"]["labels"]
    for selector in (
        one("PodDisruptionBudget", "llm-balancer")["spec"]["selector"]["matchLabels"],
        one("Service", "llm-balancer")["spec"]["selector"],
        one("Deployment", "llm-balancer")["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()
    assert one("Deployment", "llm-balancer")["spec"]["replicas"] >= 2
