"""make k8s-check catches each kind of mistake: a missing setting, a wrong port, a missing
NetworkPolicy edge, a root container, an object the schema refuses."""

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deploy import k8s_check

Objects = list[dict[str, Any]]


@pytest.fixture(scope="module")
def base() -> Objects:
    return k8s_check.render(k8s_check.REPO / "deploy" / "k8s")


def find(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    found = k8s_check._find(objects, kind, name)
    assert found is not None, (kind, name)
    return found


def container(objects: Objects, name: str) -> dict[str, Any]:
    return find(objects, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]


def problems_after(base: Objects, change: Callable[[Objects], None]) -> list[str]:
    objects = copy.deepcopy(base)
    change(objects)
    return k8s_check.check(objects)


@pytest.mark.parametrize("target", k8s_check.TARGETS, ids=lambda p: p.name)
def test_the_manifests_pass(target: Any) -> None:
    assert k8s_check.check(k8s_check.render(target)) == []


def test_a_missing_setting_is_caught(base: Objects) -> None:
    def drop_redis_url(objects: Objects) -> None:
        del find(objects, "ConfigMap", "mparticle-audiences")["data"]["REDIS_URL"]

    problems = problems_after(base, drop_redis_url)

    assert "Deployment/keys/keys: does not set REDIS_URL, which services.keys reads at start" in (
        problems
    )
    assert any("Deployment/audience/audience: does not set REDIS_URL" in p for p in problems)


def test_a_secret_setting_left_out_of_a_deployment_is_caught(base: Objects) -> None:
    problems = problems_after(base, lambda o: container(o, "gateway").pop("env"))

    assert problems == [
        "Deployment/gateway/gateway: does not set MPARTICLE_TOKEN, which services.gateway "
        "reads at start"
    ]


def test_a_setting_from_a_secret_key_that_is_not_there_is_caught(base: Objects) -> None:
    def drop_password(objects: Objects) -> None:
        del find(objects, "Secret", "mparticle-audiences")["stringData"]["REDIS_PASSWORD"]

    problems = problems_after(base, drop_password)

    assert sorted(problems) == [
        f"{workload}: REDIS_PASSWORD comes from Secret/mparticle-audiences key REDIS_PASSWORD, "
        "which the manifests do not hold"
        for workload in (
            "Deployment/audience/audience",
            "Deployment/keys/keys",
            "Deployment/segment/segment",
            "StatefulSet/redis/redis",
        )
    ]


def test_a_malformed_setting_is_caught(base: Objects) -> None:
    def bad_port(objects: Objects) -> None:
        find(objects, "ConfigMap", "mparticle-audiences")["data"]["SEGMENT_PORT"] = "http"

    assert any("bad setting SEGMENT_PORT" in p for p in problems_after(base, bad_port))


def test_a_probe_on_the_wrong_port_is_caught(base: Objects) -> None:
    def wrong_probe(objects: Objects) -> None:
        container(objects, "audience")["readinessProbe"]["grpc"]["port"] = 50059

    assert problems_after(base, wrong_probe) == [
        "Deployment/audience/audience: readinessProbe uses port 50059, which nothing binds"
    ]


def test_a_probe_naming_no_container_port_is_caught(base: Objects) -> None:
    def misspelt_probe(objects: Objects) -> None:
        container(objects, "gateway")["livenessProbe"]["httpGet"]["port"] = "htp"

    assert problems_after(base, misspelt_probe) == [
        "Deployment/gateway/gateway: livenessProbe uses port htp, which no container port is named"
    ]


def test_a_target_kustomize_cannot_render_says_why(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - missing.yaml\n")

    with pytest.raises(k8s_check.RenderError, match=r"missing\.yaml"):
        k8s_check.render(tmp_path)


def test_a_service_targeting_an_unserved_port_is_caught(base: Objects) -> None:
    def wrong_target(objects: Objects) -> None:
        find(objects, "Service", "keys")["spec"]["ports"][0]["targetPort"] = 50052

    problems = problems_after(base, wrong_target)

    assert "Service/keys: port 50051 targets 50052, which Deployment/keys/keys does not serve" in (
        problems
    )


def test_a_server_moved_to_another_port_is_caught(base: Objects) -> None:
    def move(objects: Objects) -> None:
        find(objects, "ConfigMap", "mparticle-audiences")["data"]["KEYS_PORT"] = "50061"

    problems = problems_after(base, move)

    assert "Deployment/keys/keys: the server binds 50061, but no container port declares it" in (
        problems
    )
    assert "Deployment/keys/keys: container port 50051 is not a port the server binds" in problems


def test_a_missing_network_edge_is_caught(base: Objects) -> None:
    def drop_edge(objects: Objects) -> None:
        objects.remove(find(objects, "NetworkPolicy", "ingress-audience-from-segment"))

    assert problems_after(base, drop_edge) == [
        "NetworkPolicy: segment calls audience:50052, but no ingress allows it"
    ]


def test_an_edge_the_code_never_uses_is_caught(base: Objects) -> None:
    def open_redis_to_gateway(objects: Objects) -> None:
        policy = copy.deepcopy(find(objects, "NetworkPolicy", "ingress-redis-from-keys"))
        policy["metadata"]["name"] = "ingress-redis-from-gateway"
        policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"] = {
            "app.kubernetes.io/name": "gateway"
        }
        objects.append(policy)

    assert problems_after(base, open_redis_to_gateway) == [
        "NetworkPolicy: allows gateway -> redis:6379, a call the code never makes"
    ]


def test_a_missing_default_deny_is_caught(base: Objects) -> None:
    problems = problems_after(base, lambda o: o.remove(find(o, "NetworkPolicy", "default-deny")))

    assert problems == [
        "no default-deny NetworkPolicy (podSelector {}, Ingress and Egress, no rules)"
    ]


def test_a_root_container_is_caught(base: Objects) -> None:
    def run_as_root(objects: Objects) -> None:
        pod = find(objects, "Deployment", "gateway")["spec"]["template"]["spec"]
        pod["securityContext"]["runAsUser"] = 0

    assert problems_after(base, run_as_root) == [
        "Deployment/gateway/gateway: runs as root (runAsUser is 0 or unset)"
    ]


@pytest.mark.parametrize(
    ("users", "root"),
    [
        ("", True),
        ("USER 0\n", True),
        ("USER root:root\n", True),
        ("USER 10001:10001\nUSER root\n", True),
        ("USER root\nUSER 10001:10001\n", False),
    ],
    ids=["no_user", "uid_0", "root_with_group", "root_last", "non_root_last"],
)
def test_an_image_that_runs_as_root_is_caught(tmp_path: Path, users: str, root: bool) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(f'FROM python:3.12-slim\nRUN true\n{users}CMD ["python"]\n')

    problems = list(k8s_check.dockerfile_problems(dockerfile))

    assert problems == (["Dockerfile: the image runs as root (no USER, or USER 0)"] if root else [])


def test_other_hardening_slips_are_caught(base: Objects) -> None:
    def loosen(objects: Objects) -> None:
        context = container(objects, "segment")["securityContext"]
        context["readOnlyRootFilesystem"] = False
        context["capabilities"] = {"drop": []}
        del container(objects, "segment")["resources"]["limits"]
        find(objects, "Deployment", "keys")["spec"]["template"]["spec"][
            "terminationGracePeriodSeconds"
        ] = 5

    problems = problems_after(base, loosen)

    assert "Deployment/segment/segment: the root filesystem is writable" in problems
    assert "Deployment/segment/segment: does not drop all capabilities" in problems
    assert "Deployment/segment/segment: no cpu limits" in problems
    assert any("Deployment/keys/keys: terminationGracePeriodSeconds 5" in p for p in problems)


def test_an_object_the_schema_refuses_is_caught(base: Objects) -> None:
    def typo(objects: Objects) -> None:
        container(objects, "keys")["imagePullPolicyy"] = "Always"

    problems = problems_after(base, typo)

    assert len(problems) == 1
    assert problems[0].startswith("Deployment/keys: not valid for Kubernetes 1.37.0")


def test_a_rule_open_to_every_peer_or_port_is_caught(base: Objects) -> None:
    def open_up(objects: Objects) -> None:
        find(objects, "NetworkPolicy", "ingress-redis-from-keys")["spec"]["ingress"][0]["from"] = [
            {}
        ]
        del find(objects, "NetworkPolicy", "egress-gateway-to-keys")["spec"]["egress"][0]["ports"]

    problems = problems_after(base, open_up)

    assert "NetworkPolicy/ingress-redis-from-keys: ingress[0] allows every peer" in problems
    assert "NetworkPolicy/egress-gateway-to-keys: egress[0] allows every port" in problems


def test_the_gateway_open_to_mparticle_is_not_an_open_rule_but_other_ports_are(
    base: Objects,
) -> None:
    def widen(objects: Objects) -> None:
        rule = find(objects, "NetworkPolicy", "ingress-gateway-from-anywhere")["spec"]["ingress"][0]
        rule["ports"].append({"protocol": "TCP", "port": 9999})

    assert "NetworkPolicy/ingress-gateway-from-anywhere: ingress[0] allows every peer" in (
        problems_after(base, widen)
    )


def test_missing_probes_budgets_autoscalers_and_pre_stop_are_caught(base: Objects) -> None:
    def strip(objects: Objects) -> None:
        del container(objects, "keys")["readinessProbe"]
        del container(objects, "segment")["livenessProbe"]
        objects.remove(find(objects, "PodDisruptionBudget", "audience"))
        objects.remove(find(objects, "HorizontalPodAutoscaler", "segment"))
        del container(objects, "gateway")["lifecycle"]

    problems = problems_after(base, strip)

    assert sorted(problems) == [
        "Deployment/audience: no PodDisruptionBudget covers its pods",
        "Deployment/gateway/gateway: no preStop delay to leave the load balancers first",
        "Deployment/keys/keys: no readinessProbe",
        "Deployment/segment/segment: no livenessProbe",
        "Deployment/segment: no HorizontalPodAutoscaler scales it",
    ]


def test_a_scrape_annotation_on_the_wrong_port_is_caught(base: Objects) -> None:
    def wrong_port(objects: Objects) -> None:
        pod = find(objects, "Deployment", "audience")["spec"]["template"]
        pod["metadata"]["annotations"]["prometheus.io/port"] = "50052"

    assert problems_after(base, wrong_port) == [
        "Deployment/audience/audience: prometheus.io/port is 50052, but metrics are served on 9092"
    ]
