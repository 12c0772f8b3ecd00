"""make k8s-check: the Kubernetes manifests are ones a cluster would accept, and they agree
with the code. Offline: kustomize renders, kubernetes-validate checks each object against
the schemas of a current Kubernetes release, and the rest is read from the services' own
settings classes.

Checked for the base and every overlay:
- every object is valid for Kubernetes KUBERNETES_VERSION (strict: no unknown fields);
- every setting a service reads at start is set in its Deployment, with a valid value, and
  servers listen on all interfaces;
- container ports are exactly the ports the server binds; every probe and Service port
  leads to one of them;
- a default-deny NetworkPolicy exists, every call the code makes (a *_TARGET or REDIS_URL
  setting) is allowed both ways, and no policy allows a call between pods of the suite that
  the code does not make; no rule opens a suite pod to every peer or every port, but for
  the gateway's HTTP port, which mParticle calls from the internet;
- every container has readiness and liveness probes; every Deployment has a
  PodDisruptionBudget and a HorizontalPodAutoscaler; the gateway waits (preStop) for its
  endpoint to leave the load balancers; scrape annotations name the port metrics are on;
- no container runs as root or can gain privileges; root filesystems are read-only, all
  capabilities are dropped, seccomp is RuntimeDefault, requests and limits are set, and the
  grace period outlasts the service's own drain time;
- the image's Dockerfile runs as a non-root user.
"""

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import yaml
from pydantic import BaseModel, ValidationError

from services.audience.settings import AudienceSettings
from services.gateway.settings import GatewaySettings
from services.keys.settings import KeysSettings
from services.segment.settings import SegmentSettings

REPO = Path(__file__).resolve().parents[1]
TARGETS = (REPO / "deploy" / "k8s", *sorted((REPO / "deploy" / "overlays").iterdir()))
KUBERNETES_VERSION = "1.37.0"

# The module a container runs (python -m <module>) -> the settings it reads at start.
SETTINGS: dict[str, type[BaseModel]] = {
    "services.keys": KeysSettings,
    "services.audience": AudienceSettings,
    "services.segment": SegmentSettings,
    "services.gateway": GatewaySettings,
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}
ALL_INTERFACES = {"0.0.0.0", "::", "[::]"}

Objects = list[dict[str, Any]]


@dataclass(frozen=True)
class Container:
    workload: dict[str, Any]
    pod: dict[str, Any]
    spec: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.workload['kind']}/{self.workload['metadata']['name']}/{self.spec['name']}"

    @property
    def module(self) -> str:
        command = [*self.spec.get("command", []), *self.spec.get("args", [])]
        if "-m" in command and command.index("-m") + 1 < len(command):
            return command[command.index("-m") + 1]
        return ""

    @property
    def labels(self) -> dict[str, str]:
        return self.workload["spec"]["template"]["metadata"].get("labels", {})


class RenderError(Exception):
    """kustomize could not render a target; the message is what it said."""


def render(path: Path) -> Objects:
    kubectl = Path(sys.executable).parent / "kubectl"
    binary = str(kubectl) if kubectl.exists() else shutil.which("kubectl") or "kubectl"
    result = subprocess.run(
        [binary, "kustomize", str(path)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RenderError(result.stderr.strip() or f"kubectl exited {result.returncode}")

    return [document for document in yaml.safe_load_all(result.stdout) if document]


def check(objects: Objects) -> list[str]:
    """Every problem found in one rendered set of manifests."""
    return [
        *schema_problems(objects),
        *settings_problems(objects),
        *reference_problems(objects),
        *port_problems(objects),
        *network_problems(objects),
        *open_rule_problems(objects),
        *availability_problems(objects),
        *security_problems(objects),
    ]


def schema_problems(objects: Objects) -> Iterator[str]:
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            version = f"Kubernetes {KUBERNETES_VERSION}"
            yield f"{_name(obj)}: not valid for {version}: {path}: {exc.message}"


def settings_problems(objects: Objects) -> Iterator[str]:
    for container in _containers(objects):
        settings_class = SETTINGS.get(container.module)
        if settings_class is None:
            continue

        env = _environment(container, objects)
        for name in sorted(_setting_names(settings_class) - env.keys()):
            yield (
                f"{container.where}: does not set {name}, which {container.module} reads at start"
            )

        settings = _settings(settings_class, env)
        if isinstance(settings, str):
            yield f"{container.where}: {settings}"
        elif getattr(settings, "host", None) not in ALL_INTERFACES:
            yield f"{container.where}: listens on {settings.host}, unreachable from other pods"


def reference_problems(objects: Objects) -> Iterator[str]:
    """Variables taken from a ConfigMap or Secret key that the manifests do not hold: the
    pod would not start."""
    for container in _containers(objects):
        for variable in container.spec.get("env", []):
            referenced = _key_reference(variable, objects)
            if referenced is None:
                continue
            kind, reference, values = referenced
            if reference["key"] not in values and not reference.get("optional"):
                yield (
                    f"{container.where}: {variable['name']} comes from {kind}/"
                    f"{reference['name']} key {reference['key']}, which the manifests do not hold"
                )


def port_problems(objects: Objects) -> Iterator[str]:
    for container in _containers(objects):
        bound = _bound_ports(container, objects)
        if bound is None:
            continue

        declared = {p["containerPort"]: p.get("name") for p in container.spec.get("ports", [])}
        for port in sorted(bound - declared.keys()):
            yield f"{container.where}: the server binds {port}, but no container port declares it"
        for port in sorted(declared.keys() - bound):
            yield f"{container.where}: container port {port} is not a port the server binds"

        for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
            probed = _probe_port(container.spec.get(probe_name))
            if probed is None:
                continue
            number = _resolve_port(container, probed)
            if number is None:
                yield (
                    f"{container.where}: {probe_name} uses port {probed}, which no container "
                    "port is named"
                )
            elif number not in bound:
                yield f"{container.where}: {probe_name} uses port {number}, which nothing binds"

    for service in _of_kind(objects, "Service"):
        selected = [c for c in _containers(objects) if _selects(service["spec"], c.labels)]
        if not selected:
            yield f"{_name(service)}: selects no pod of the suite"
        for port in service["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            for container in selected:
                number = _resolve_port(container, target)
                bound = _bound_ports(container, objects)
                if number is None or (bound is not None and number not in bound):
                    yield (
                        f"{_name(service)}: port {port['port']} targets {target}, which "
                        f"{container.where} does not serve"
                    )


def network_problems(objects: Objects) -> Iterator[str]:
    policies = list(_of_kind(objects, "NetworkPolicy"))
    if not any(_is_default_deny(p) for p in policies):
        yield "no default-deny NetworkPolicy (podSelector {}, Ingress and Egress, no rules)"

    calls = set(_calls(objects))
    ingress, egress = _allowed(objects, policies)
    for caller, callee, port in sorted(calls):
        if callee.startswith("external:"):
            if (caller, "ipBlock", port) not in egress:
                yield f"NetworkPolicy: {caller} calls {callee[9:]}:{port}, but no egress allows it"
            continue
        if (caller, callee, port) not in ingress:
            yield f"NetworkPolicy: {caller} calls {callee}:{port}, but no ingress allows it"
        if (caller, callee, port) not in egress:
            yield f"NetworkPolicy: {caller} calls {callee}:{port}, but no egress allows it"

    for caller, callee, port in sorted((ingress | egress) - calls):
        if callee != "ipBlock":
            yield f"NetworkPolicy: allows {caller} -> {callee}:{port}, a call the code never makes"


def open_rule_problems(objects: Objects) -> Iterator[str]:
    """Rules of policies selecting suite pods that admit every peer or every port."""
    pods = {_component(c): c.labels for c in _containers(objects)}
    public = set(_public_ports(objects))
    for policy in _of_kind(objects, "NetworkPolicy"):
        spec = policy["spec"]
        selected = {n for n, labels in pods.items() if _selects(spec["podSelector"], labels)}
        if not selected:
            continue
        for direction, peers_key in (("ingress", "from"), ("egress", "to")):
            for index, rule in enumerate(spec.get(direction, [])):
                where = f"{_name(policy)}: {direction}[{index}]"
                if not rule.get("ports"):
                    yield f"{where} allows every port"
                    continue
                if not _open_peers(rule.get(peers_key)):
                    continue
                opened = {(pod, port) for pod in selected for port in _rule_ports(rule)}
                if direction == "egress" or not opened <= public:
                    yield f"{where} allows every peer"


def availability_problems(objects: Objects) -> Iterator[str]:
    for container in _containers(objects):
        if container.spec in container.pod.get("initContainers", []):
            continue
        for probe in ("readinessProbe", "livenessProbe"):
            if probe not in container.spec:
                yield f"{container.where}: no {probe}"

        settings = _service_settings(container, objects)
        if settings is None:
            continue
        annotations = container.workload["spec"]["template"]["metadata"].get("annotations", {})
        metrics_port = getattr(settings, "metrics_port", settings.port)
        if annotations.get("prometheus.io/scrape") != "true":
            yield f"{container.where}: pods are not marked for scraping (prometheus.io/scrape)"
        elif annotations.get("prometheus.io/port") != str(metrics_port):
            yield (
                f"{container.where}: prometheus.io/port is {annotations.get('prometheus.io/port')}"
                f", but metrics are served on {metrics_port}"
            )
        if container.module == "services.gateway":
            pre_stop = container.spec.get("lifecycle", {}).get("preStop", {})
            if not pre_stop.get("sleep", {}).get("seconds") and "exec" not in pre_stop:
                yield f"{container.where}: no preStop delay to leave the load balancers first"

    for deployment in _of_kind(objects, "Deployment"):
        name = deployment["metadata"]["name"]
        labels = deployment["spec"]["template"]["metadata"].get("labels", {})
        if not any(
            _selects(pdb["spec"].get("selector", {}), labels)
            for pdb in _of_kind(objects, "PodDisruptionBudget")
        ):
            yield f"Deployment/{name}: no PodDisruptionBudget covers its pods"
        if not any(
            hpa["spec"]["scaleTargetRef"]
            == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
            for hpa in _of_kind(objects, "HorizontalPodAutoscaler")
        ):
            yield f"Deployment/{name}: no HorizontalPodAutoscaler scales it"


def security_problems(objects: Objects) -> Iterator[str]:
    for container in _containers(objects):
        pod_context = container.pod.get("securityContext", {})
        context = {**pod_context, **container.spec.get("securityContext", {})}
        where = container.where

        if context.get("runAsNonRoot") is not True:
            yield f"{where}: runAsNonRoot is not true"
        if not context.get("runAsUser"):
            yield f"{where}: runs as root (runAsUser is 0 or unset)"
        if context.get("allowPrivilegeEscalation") is not False:
            yield f"{where}: allowPrivilegeEscalation is not false"
        if context.get("readOnlyRootFilesystem") is not True:
            yield f"{where}: the root filesystem is writable"
        if "ALL" not in context.get("capabilities", {}).get("drop", []):
            yield f"{where}: does not drop all capabilities"
        if context.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            yield f"{where}: seccomp profile is not RuntimeDefault"

        resources = container.spec.get("resources", {})
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in resources.get(kind, {}):
                    yield f"{where}: no {resource} {kind}"

        yield from _grace_problems(container, objects)

    yield from dockerfile_problems(REPO / "Dockerfile")


def dockerfile_problems(path: Path) -> Iterator[str]:
    """The image runs as the last USER of its Dockerfile; root when there is none."""
    users = re.findall(r"^USER\s+(\S+)", path.read_text(), re.MULTILINE)
    user = users[-1].split(":")[0] if users else None
    if user in (None, "0", "root"):
        yield f"{path.name}: the image runs as root (no USER, or USER 0)"


def _grace_problems(container: Container, objects: Objects) -> Iterator[str]:
    settings = _service_settings(container, objects)
    if settings is None:
        return

    pre_stop = container.spec.get("lifecycle", {}).get("preStop", {}).get("sleep", {})
    drain = settings.shutdown_grace_seconds + pre_stop.get("seconds", 0)
    grace = container.pod.get("terminationGracePeriodSeconds", 30)
    if grace <= drain:
        yield (
            f"{container.where}: terminationGracePeriodSeconds {grace} does not outlast "
            f"the service's own drain ({drain:g} s)"
        )


def _containers(objects: Objects) -> Iterator[Container]:
    for workload in objects:
        if workload.get("kind") in WORKLOAD_KINDS:
            pod = workload["spec"]["template"]["spec"]
            for spec in [*pod.get("initContainers", []), *pod.get("containers", [])]:
                yield Container(workload, pod, spec)


def _of_kind(objects: Objects, kind: str) -> Iterator[dict[str, Any]]:
    return (obj for obj in objects if obj.get("kind") == kind)


def _find(objects: Objects, kind: str, name: str) -> dict[str, Any] | None:
    return next((o for o in _of_kind(objects, kind) if o["metadata"]["name"] == name), None)


def _name(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def _environment(container: Container, objects: Objects) -> dict[str, str]:
    """The environment variables the container starts with, values resolved where known."""
    env: dict[str, str] = {}
    for source in container.spec.get("envFrom", []):
        if "configMapRef" in source:
            config = _find(objects, "ConfigMap", source["configMapRef"]["name"]) or {}
            env.update(config.get("data", {}))
        if "secretRef" in source:
            secret = _find(objects, "Secret", source["secretRef"]["name"]) or {}
            env.update({**secret.get("data", {}), **secret.get("stringData", {})})
    for variable in container.spec.get("env", []):
        env[variable["name"]] = _env_value(variable, objects)
    return env


def _env_value(variable: dict[str, Any], objects: Objects) -> str:
    if "value" in variable:
        return str(variable["value"])
    referenced = _key_reference(variable, objects)
    if referenced is None:
        return ""
    _, reference, values = referenced
    return str(values.get(reference["key"], ""))


def _key_reference(
    variable: dict[str, Any], objects: Objects
) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
    """For a variable taken from a ConfigMap or Secret key: the kind, the reference, and
    the values the manifests give that object (empty when there is no such object)."""
    reference = variable.get("valueFrom", {})
    for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
        if key in reference:
            source = _find(objects, kind, reference[key]["name"]) or {}
            return kind, reference[key], {**source.get("data", {}), **source.get("stringData", {})}
    return None


def _setting_names(settings_class: type[BaseModel]) -> set[str]:
    return {str(f.validation_alias) for f in settings_class.model_fields.values()}


def _settings(settings_class: type[BaseModel], env: dict[str, str]) -> Any:
    """The settings the service would read from ``env``, or why it would refuse to start."""
    values = {k: v for k, v in env.items() if k in _setting_names(settings_class)}
    try:
        return settings_class.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        return f"bad setting {'.'.join(map(str, error['loc']))}: {error['msg']}"


def _service_settings(container: Container, objects: Objects) -> Any:
    """The settings one of our services reads in this container; None for another program,
    or when the settings are not valid (settings_problems reports that)."""
    settings_class = SETTINGS.get(container.module)
    if settings_class is None:
        return None
    settings = _settings(settings_class, _environment(container, objects))
    return None if isinstance(settings, str) else settings


def _bound_ports(container: Container, objects: Objects) -> set[int] | None:
    """The ports the container's server binds, read from its settings or its config."""
    settings = _service_settings(container, objects)
    if settings is not None:
        ports = {settings.port}
        if hasattr(settings, "metrics_port"):
            ports.add(settings.metrics_port)
        return ports

    if "redis-server" in " ".join(container.spec.get("command", [])):
        return {_redis_port(container, objects)}
    return None


def _redis_port(container: Container, objects: Objects) -> int:
    for volume in container.pod.get("volumes", []):
        config = _find(objects, "ConfigMap", volume.get("configMap", {}).get("name", ""))
        for text in (config or {}).get("data", {}).values():
            match = re.search(r"^port\s+(\d+)", text, re.MULTILINE)
            if match:
                return int(match.group(1))
    return 6379


def _resolve_port(container: Container, port: int | str) -> int | None:
    if isinstance(port, int):
        return port
    for declared in container.spec.get("ports", []):
        if declared.get("name") == port:
            return declared["containerPort"]
    return None


def _probe_port(probe: dict[str, Any] | None) -> int | str | None:
    """The port a probe names, as a number or a container port's name (None: no probe, or
    one that opens no port)."""
    if not probe:
        return None
    for action in ("grpc", "httpGet", "tcpSocket"):
        if action in probe:
            port: int | str = probe[action]["port"]
            return port
    return None


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (a Service's plain map, or matchLabels/matchExpressions)
    matches ``labels``."""
    if "selector" in selector and isinstance(selector["selector"], dict):
        selector = {"matchLabels": selector["selector"]}
    if not selector.get("matchLabels") and not selector.get("matchExpressions"):
        return True
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        present = labels.get(expression["key"])
        if expression["operator"] == "In" and present not in expression["values"]:
            return False
        if expression["operator"] == "NotIn" and present in expression["values"]:
            return False
        if expression["operator"] == "Exists" and present is None:
            return False
    return True


def _component(container: Container) -> str:
    return container.labels.get("app.kubernetes.io/name", container.workload["metadata"]["name"])


def _calls(objects: Objects) -> Iterator[tuple[str, str, int]]:
    """(caller, callee, port) for every call the code makes, from its target settings."""
    for container in _containers(objects):
        settings_class = SETTINGS.get(container.module)
        if settings_class is None:
            continue
        env = _environment(container, objects)
        for field_name, field in settings_class.model_fields.items():
            if field_name.endswith("_target") or field_name == "redis_url":
                address = env.get(str(field.validation_alias), "")
                yield _call(container, address, objects)


def _call(container: Container, address: str, objects: Objects) -> tuple[str, str, int]:
    caller = _component(container)
    if "://" in address and not address.startswith("dns:"):
        parts = urlsplit(address)
        host, port = parts.hostname or "", parts.port or 6379
    else:
        host, _, port_text = address.removeprefix("dns:///").rpartition(":")
        port = int(port_text or 0)
    service = _find(objects, "Service", host.split(".")[0])
    if service is None:
        return caller, f"external:{host}", port

    for service_port in service["spec"].get("ports", []):
        if service_port["port"] == port:
            for callee in _containers(objects):
                if _selects(service["spec"], callee.labels):
                    number = _resolve_port(callee, service_port.get("targetPort", port))
                    return caller, _component(callee), number or port
    return caller, f"{host} (no such service port)", port


def _is_default_deny(policy: dict[str, Any]) -> bool:
    spec = policy["spec"]
    return (
        spec.get("podSelector", {}) == {}
        and set(spec.get("policyTypes", [])) == {"Ingress", "Egress"}
        and not spec.get("ingress")
        and not spec.get("egress")
    )


def _allowed(
    objects: Objects, policies: Objects
) -> tuple[set[tuple[str, str, int]], set[tuple[str, str, int]]]:
    """The (caller, callee, port) edges between suite pods that ingress and egress rules
    allow; an egress to an ipBlock appears with callee "ipBlock"."""
    pods = {_component(c): c.labels for c in _containers(objects)}
    ingress: set[tuple[str, str, int]] = set()
    egress: set[tuple[str, str, int]] = set()

    for policy in policies:
        spec = policy["spec"]
        selected = [name for name, labels in pods.items() if _selects(spec["podSelector"], labels)]
        for rule in spec.get("ingress", []):
            for peer in _peers(rule.get("from"), pods):
                for port in _rule_ports(rule):
                    ingress.update((peer, callee, port) for callee in selected)
        for rule in spec.get("egress", []):
            for peer in _peers(rule.get("to"), pods):
                for port in _rule_ports(rule):
                    egress.update((caller, peer, port) for caller in selected)
    return ingress, egress


def _peers(peers: list[dict[str, Any]] | None, pods: dict[str, dict[str, str]]) -> set[str]:
    """Suite pods a rule's peers name, plus "ipBlock" for address ranges. Peers in other
    namespaces are not pods of the suite."""
    if peers is None:
        return set()
    names: set[str] = set()
    for peer in peers:
        if "ipBlock" in peer:
            names.add("ipBlock")
        elif "podSelector" in peer and "namespaceSelector" not in peer:
            names.update(n for n, labels in pods.items() if _selects(peer["podSelector"], labels))
    return names


def _open_peers(peers: list[dict[str, Any]] | None) -> bool:
    """Whether a rule's peers admit any address: none given, an empty peer, a selector of
    every pod in every namespace, or an address range covering everything."""
    if not peers:
        return True
    for peer in peers:
        if not peer:
            return True
        if peer.get("ipBlock", {}).get("cidr") in ("0.0.0.0/0", "::/0"):
            return True
        if (
            "namespaceSelector" in peer
            and not peer["namespaceSelector"]
            and not peer.get("podSelector")
        ):
            return True
    return False


def _public_ports(objects: Objects) -> Iterator[tuple[str, int]]:
    """(pod, port) pairs meant to be reached from anywhere: the gateway's HTTP port."""
    for container in _containers(objects):
        settings = _service_settings(container, objects)
        if container.module == "services.gateway" and settings is not None:
            yield _component(container), settings.port


def _rule_ports(rule: dict[str, Any]) -> list[int]:
    return [p["port"] for p in rule.get("ports", []) if isinstance(p.get("port"), int)]


def main() -> int:
    failed = False
    for target in TARGETS:
        label = target.relative_to(REPO)
        try:
            problems = check(render(target))
        except RenderError as exc:
            problems = [f"kustomize cannot render it: {exc}"]

        if problems:
            failed = True
            print(f"{label}: {len(problems)} problem(s)")
            for problem in problems:
                print(f"  - {problem}")
        else:
            print(
                f"{label}: valid for Kubernetes {KUBERNETES_VERSION} and consistent with the code"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
