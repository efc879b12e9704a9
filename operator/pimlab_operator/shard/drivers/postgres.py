"""The PostgreSQL driver: the operator talks to each pod's instance manager (`pimlab instance`).

Why the instance manager's HTTP API rather than psycopg from the operator: the operator then
needs no database credentials at all (only the manager token), it can tell "pod unreachable"
from "postgres down" from "postgres up but not streaming", and the actions that must touch the
data directory (stop and keep stopped, pg_rewind, a fresh pg_basebackup) can only run in the pod.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pimlab_operator.shard.failover import Observation
from pimlab_operator.shard.failover_pass import DriverError


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int = 8008


class PostgresDriver:
    def __init__(self, endpoints: dict[str, Endpoint], token: str | None = None,
                 timeout: float = 2.0, action_timeout: float = 120.0):
        self.endpoints = endpoints
        self.token = token
        self.timeout = timeout
        self.action_timeout = action_timeout
        self.last_status: dict[str, dict | None] = {}

    def _url(self, pod: str, path: str) -> str:
        endpoint = self.endpoints[pod]
        return f"http://{endpoint.host}:{endpoint.port}{path}"

    def status(self, pod: str) -> dict | None:
        try:
            with urllib.request.urlopen(self._url(pod, "/status"), timeout=self.timeout) as response:
                return json.loads(response.read())
        except (OSError, ValueError, KeyError):
            return None

    def _post(self, pod: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body or {}).encode()
        request = urllib.request.Request(self._url(pod, path), data=data, method="POST",
                                         headers={"Content-Type": "application/json",
                                                  **({"Authorization": f"Bearer {self.token}"} if self.token else {})})
        try:
            with urllib.request.urlopen(request, timeout=self.action_timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            try:
                detail = json.loads(error.read()).get("message", "")
            except ValueError:
                detail = ""
            raise DriverError(f"{path} on {pod}: HTTP {error.code} {detail}".strip()) from None
        except (OSError, ValueError) as error:
            raise DriverError(f"{path} on {pod}: {type(error).__name__}") from None

    def observe(self, pods: list[str], labels: dict[str, str | None]) -> list[Observation]:
        """Every instance at once: a hung one costs the pass one timeout, not one per instance."""
        asked = [pod for pod in pods if pod in self.endpoints]
        with ThreadPoolExecutor(max_workers=max(1, len(asked))) as pool:
            answers = dict(zip(asked, pool.map(self.status, asked)))
        out = []
        for pod in pods:
            status = answers.get(pod)
            self.last_status[pod] = status
            if status is None:
                out.append(Observation(pod, False, labelled_role=labels.get(pod)))
                continue
            out.append(Observation(
                pod, True, status.get("role", "unknown"), bool(status.get("healthy")), status.get("position"),
                bool(status.get("synchronous")), status.get("upstream"), bool(status.get("streaming")),
                labelled_role=labels.get(pod), timeline=status.get("timeline")))
        return out

    def fence(self, pod: str) -> None:
        self._post(pod, "/fence")

    def detach(self, pod: str) -> None:
        self._post(pod, "/detach")

    def promote(self, pod: str) -> None:
        self._post(pod, "/promote")

    def follow(self, pod: str, primary: str) -> None:
        endpoint = self.endpoints.get(primary)
        self._post(pod, "/follow", {"primary": primary, **({"address": endpoint.host} if endpoint else {})})

    def write_probe(self, pod: str) -> bool:
        try:
            return bool(self._post(pod, "/write-probe").get("acknowledged"))
        except DriverError:
            return False

    def replica_details(self, primary: str | None) -> dict[str, dict]:
        """Per replica: synchronous (quorum) state and lag in bytes, from the primary's view, as
        fields of its ReplicaStatus."""
        details: dict[str, dict] = {}
        for row in ((self.last_status.get(primary) or {}).get("replication") or []) if primary else []:
            details[row["name"]] = {"synchronization_state": f"{row['state']}/{row['syncState']}",
                                    "synchronous_commit": row["syncState"] in ("sync", "quorum"),
                                    "lag_bytes": row.get("lagBytes")}
        return details
