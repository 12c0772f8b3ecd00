"""The Grafana dashboard only charts metrics the services export."""

import json
import re

import prometheus_client

import services.audience.servicer
import services.gateway.metrics
import services.keys.servicer  # noqa: F401
from tests.conftest import REPO

DASHBOARD = REPO / "deploy" / "grafana" / "mparticle-audiences.json"


def exported_names() -> set[str]:
    names: set[str] = set()
    for metric in prometheus_client.REGISTRY.collect():
        names.update(sample.name for sample in metric.samples)
        names.add(metric.name + "_total")
        names.add(metric.name + "_bucket")
    return names


def test_every_panel_queries_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_names()

    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {
        name for expr in expressions for name in re.findall(r"\b([a-z_]+_(?:total|bucket))\b", expr)
    }

    assert len(expressions) >= 10
    assert used and used <= exported, used - exported
