"""The compose file and the Kubernetes manifests: parsed, validated against the Kubernetes OpenAPI
schemas (kubernetes-validate, schemas bundled offline), and checked for what they must say.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.data import PROJECT

DEPLOY = PROJECT / "deploy"
K8S = DEPLOY / "k8s"
RUNNERS = {"asr": True, "align": True, "diarize": False}  # runner -> holds a GPU model


def _documents() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [(path, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in _documents() if d["kind"] == kind}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def test_compose_file() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    service = compose["services"]["whisperx"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD" and "/readyz" in " ".join(test)
    assert service["read_only"] is True
    assert not service.get("volumes"), "models come from the image: nothing to mount"
    assert service["environment"]["HF_HUB_OFFLINE"] == "1"
    assert all(t.startswith("/tmp") for t in service["tmpfs"])
    assert service["environment"]["BENTOML_HOME"].startswith("/tmp/")


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_manifest_validates_against_kubernetes_schemas(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_validator_rejects_a_broken_manifest() -> None:
    deployment = dict(_by_kind("Deployment")["whisperx-asr"])
    broken = {**deployment, "spec": {**deployment["spec"], "replicas": "many"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_each_component_has_its_own_deployment_service_and_hpa() -> None:
    deployments, services, hpas = _by_kind("Deployment"), _by_kind("Service"), _by_kind("HorizontalPodAutoscaler")
    for component in ["gateway", *RUNNERS]:
        name = f"whisperx-{component}"
        deployment = deployments[name]
        container = _container(deployment)
        args = container["args"]
        assert args[:3] == ["python", "-m", "deploy.component"]
        assert args[args.index("--component") + 1] == component
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        service = next(s for s in services.values() if s["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"])
        assert service["spec"]["ports"][0]["targetPort"] == "http"
        hpa = next(h for h in hpas.values() if h["spec"]["scaleTargetRef"]["name"] == name)
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"] >= 1
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert len(deployments) == len(hpas) == 4


def test_gpu_requests_only_on_gpu_runners_and_fitting_hpa_metrics() -> None:
    deployments, hpas = _by_kind("Deployment"), _by_kind("HorizontalPodAutoscaler")
    for component in ["gateway", *RUNNERS]:
        resources = _container(deployments[f"whisperx-{component}"])["resources"]
        has_gpu = "nvidia.com/gpu" in resources.get("limits", {})
        assert has_gpu == RUNNERS.get(component, False), component
        metric = hpas[f"whisperx-{component}"]["spec"]["metrics"][0]
        if component in ("asr", "align"):  # queued work is what a GPU runner scales on
            assert metric["type"] == "Pods"
            assert metric["pods"]["metric"]["name"] == "bentoml_service_request_in_progress"
        else:
            assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"


def test_gateway_reaches_every_runner_by_its_service_address() -> None:
    services = _by_kind("Service")
    args = _container(_by_kind("Deployment")["whisperx-gateway"])["args"]
    deps = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--dependency")
    assert set(deps) == set(RUNNERS)
    for runner, url in deps.items():
        host, port = url.removeprefix("http://").split(":")
        assert host in services and services[host]["spec"]["ports"][0]["port"] == int(port), runner
    # the runner names are the graph's service names
    from _bentoml_impl.loader import load

    graph = load(str(PROJECT)).all_services()
    assert set(RUNNERS) <= set(graph)


def test_gateways_share_a_redis_job_store_that_readiness_needs() -> None:
    services, statefulsets = _by_kind("Service"), _by_kind("StatefulSet")
    env = {e["name"]: e.get("value") for e in _container(_by_kind("Deployment")["whisperx-gateway"])["env"]}
    url = env["WXS_JOB_STORE"]
    host, port = url.removeprefix("redis://").split("/")[0].split(":")
    assert host in services and services[host]["spec"]["ports"][0]["port"] == int(port)
    redis = statefulsets[host]
    assert services[host]["spec"]["selector"] == redis["spec"]["selector"]["matchLabels"]
    container = _container(redis)
    args = container["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"  # jobs are never evicted
    assert args[args.index("--appendonly") + 1] == "yes"  # queued jobs survive a Redis restart
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert "readinessProbe" in container and container["securityContext"]["runAsNonRoot"] is True
    # /readyz fails while the job store does not answer (tests/deploy/test_topology.py)
    assert _container(_by_kind("Deployment")["whisperx-gateway"])["readinessProbe"]["httpGet"]["path"] == "/readyz"
