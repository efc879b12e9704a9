"""What a drill report reads from the cluster: the Drill, its Lab's Prometheus URL, the SLOs its
budgets name, its PersonaLoad's slowest request, and the services' log lines that carry that
request's trace id (through the project's apiserver client, `pimlab_operator.kube`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from api_services.catalog import NAMES
from pimlab.report.drill import TraceLogs
from pimlab.report.view import DrillView, Slowest
from pimlab_operator import kube
from pimlab_operator.schema import API_VERSION
from pimlab_operator.slo.model import SLOSpec

#: At most this many log lines per trace are shown (a slow request logs a handful per service).
MAX_LOG_LINES = 60


@dataclass
class DrillEvidence:
    drill: dict
    slos: dict[str, SLOSpec]
    prometheus_url: str | None
    slowest: Slowest | None
    logs: TraceLogs


def services_selector(lab: str) -> str:
    """The Lab's service pods (every component of the catalog), as a label selector."""
    return f"app.kubernetes.io/instance={lab},app.kubernetes.io/component in ({','.join(NAMES)})"


def carrying(text: str, trace_id: str) -> list[str]:
    """The JSON log lines of `text` whose `trace_id` field is `trace_id` (the services' format,
    api_services/telemetry.py); lines that are not JSON objects are skipped."""
    found = []
    for line in text.splitlines():
        if trace_id not in line:  # most lines: no parse
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("trace_id") == trace_id:
            found.append(line)
    return found


def trace_logs(lab: str | None, namespace: str, trace_id: str, since: datetime | None) -> TraceLogs:
    """The lines of the Lab's service pods' logs since `since` that carry `trace_id` (the
    services log JSON lines with a `trace_id` field: api_services/telemetry.py)."""
    if not lab:
        return TraceLogs(missing="the Drill names no Lab (spec.labRef)")
    selector = services_selector(lab)
    source = (f"Logs of the pods `{selector}` in {namespace} since the drill's start, the lines whose "
              f'`"trace_id"` is {trace_id}.')
    lines = []
    try:
        pods = kube.list_objects("v1", "Pod", namespace, selector)
        for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
            name = pod["metadata"]["name"]
            text = kube.pod_log(name, namespace, since.strftime("%Y-%m-%dT%H:%M:%SZ") if since else None)
            lines += [f"{name}: {line}" for line in carrying(text, trace_id)]
    except kube.ApiError as error:
        return TraceLogs(missing=f"the pods' logs could not be read: {error}", source=source)
    if not pods:
        return TraceLogs(missing=f"no pod matches {selector} in {namespace} (the pods of the run are gone)",
                         source=source)
    return TraceLogs(lines[:MAX_LOG_LINES], source=source)


def use_the_labs_kubeconfig(root: Path) -> None:
    """Without $KUBECONFIG, talk to the lab `make lab` runs from `root` (its `.lab/kubeconfig`)."""
    kubeconfig = root / ".lab" / "kubeconfig"
    if "KUBECONFIG" not in os.environ and kubeconfig.exists():
        os.environ["KUBECONFIG"] = str(kubeconfig)


def from_the_host(url: str) -> str:
    """`url` with a Service's in-cluster name (`prometheus.monitoring`, `...svc.cluster.local`)
    replaced by its ClusterIP, which the host reaches through the real node's kube-proxy; any
    other URL as it is."""
    parts = urlsplit(url)
    labels = (parts.hostname or "").split(".")
    if len(labels) < 2 or (len(labels) > 2 and labels[2] != "svc") or labels[0].isdigit():
        return url
    service = kube.get("v1", "Service", labels[0], labels[1])
    ip = ((service or {}).get("spec") or {}).get("clusterIP")
    if not ip or ip == "None":
        return url
    return urlunsplit(parts._replace(netloc=f"{ip}:{parts.port}" if parts.port else ip))


def read(name: str, namespace: str, prometheus_url: str | None) -> DrillEvidence:
    """Everything the report needs from the cluster; LookupError when the Drill does not exist."""
    drill = kube.get(API_VERSION, "Drill", name, namespace)
    if drill is None:
        raise LookupError(f"no Drill {namespace}/{name}")
    view = DrillView.of(drill)
    if prometheus_url is None and view.lab:
        lab = kube.get(API_VERSION, "Lab", view.lab, namespace) or {}
        prometheus_url = ((lab.get("spec") or {}).get("observability") or {}).get("prometheusUrl")
        prometheus_url = prometheus_url and from_the_host(prometheus_url)
    slos = {}
    for budget in view.status.budgets:
        slo = kube.get(API_VERSION, "SLO", budget.slo, namespace)
        if slo is not None:
            slos[budget.slo] = SLOSpec.model_validate(slo["spec"])
    slowest, logs = None, TraceLogs(missing="the drill owns no PersonaLoad yet (status.load.name is unset)")
    if view.status.load.name:
        load = kube.get(API_VERSION, "PersonaLoad", view.status.load.name, namespace) or {}
        found = (load.get("status") or {}).get("slowest")
        slowest = Slowest.model_validate(found) if found else None
        if slowest and slowest.trace_id:
            logs = trace_logs(view.lab, namespace, slowest.trace_id, view.status.window.start)
    return DrillEvidence(drill, slos, prometheus_url, slowest, logs)
