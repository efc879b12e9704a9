"""The SQL Server driver: pyodbc and the T-SQL of templates/shard/sqlserver/, one connection
per replica, for an availability group with CLUSTER_TYPE = EXTERNAL (the operator is its
cluster manager, in the role Pacemaker plays with Microsoft's mssql-server-ha agent).

Never run against a real SQL Server on the project's machines (no registry serves its image):
the T-SQL is parsed with sqlglot's T-SQL dialect and the failover decisions are exercised
against `InMemoryAvailabilityGroup`, which implements the same driver interface.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from pimlab_operator.render import render_text
from pimlab_operator.shard.failover import Observation
from pimlab_operator.shard.failover_pass import DriverError

ODBC_DRIVER = "ODBC Driver 18 for SQL Server"


def tsql(template: str, **context) -> str:
    return render_text(f"shard/sqlserver/{template}", **context).strip()


def tsql_string(value: str) -> str:
    """A value for inside N'...': quotes doubled (the generated password has none; a user's may)."""
    return value.replace("'", "''")


def batches(script: str) -> list[str]:
    """Split a script on `GO` lines (a client-side separator, never sent to the server)."""
    return [b.strip() for b in re.split(r"^\s*GO\s*$", script, flags=re.MULTILINE | re.IGNORECASE) if b.strip()]


@dataclass(frozen=True)
class Target:
    host: str
    port: int = 1433


def pyodbc_connect(target: Target, username: str, password: str, timeout: int = 3):
    import pyodbc  # imported here: the driver manager is only needed where SQL Server is reached

    return pyodbc.connect(
        f"DRIVER={{{ODBC_DRIVER}}};SERVER={target.host},{target.port};UID={username};PWD={{{password}}};"
        "Encrypt=yes;TrustServerCertificate=yes", timeout=timeout, autocommit=True)


class SqlServerDriver:
    def __init__(self, targets: dict[str, Target], ag_name: str, database: str = "pim",
                 connect: Callable[[Target], object] | None = None, allow_data_loss: bool = False):
        self.targets, self.ag_name, self.database = targets, ag_name, database
        self.connect = connect
        self.allow_data_loss = allow_data_loss

    def _run(self, pod: str, sql: str, fetch: bool = False):
        try:
            conn = self.connect(self.targets[pod])
            try:
                cursor = conn.cursor()
                cursor.execute(sql)
                if fetch:
                    columns = [c[0] for c in cursor.description]
                    return [dict(zip(columns, row)) for row in cursor.fetchall()]
                return None
            finally:
                conn.close()
        except DriverError:
            raise
        except Exception as error:  # pyodbc.Error and connection failures alike
            raise DriverError(f"{pod}: {type(error).__name__}") from None

    def observe(self, pods: list[str], labels: dict[str, str | None]) -> list[Observation]:
        out = []
        for pod in pods:
            try:
                rows = self._run(pod, tsql("observe.sql.j2", ag_name=self.ag_name), fetch=True) if pod in self.targets else None
            except DriverError:
                rows = None
            if not rows:
                out.append(Observation(pod, rows is not None, "unknown" if rows is not None else "unknown",
                                       labelled_role=labels.get(pod)))
                continue
            out.append(observation(pod, rows[0], labels.get(pod)))
        return out

    def fence(self, pod: str) -> None:
        self._run(pod, tsql("demote.sql.j2", ag_name=self.ag_name))

    def detach(self, pod: str) -> None:
        """Nothing to do: a secondary receives log only from the primary the AG names, and the
        old primary has been demoted or is gone."""

    def promote(self, pod: str) -> None:
        self._run(pod, tsql("promote.sql.j2", ag_name=self.ag_name, force=self.allow_data_loss))

    def follow(self, pod: str, primary: str) -> None:
        self._run(pod, tsql("demote.sql.j2", ag_name=self.ag_name))
        self._run(pod, tsql("resume.sql.j2", database=self.database))

    def replica_details(self, primary: str | None) -> dict[str, dict]:
        """Nothing beyond the observations: each replica reports its own synchronization state."""
        return {}

    # -- the availability group's bootstrap (bootstrap.py decides who) ---------------------
    def export_certificate(self, pod: str, password: str) -> tuple[bytes, bytes]:
        """The endpoints' certificate and its private key (encrypted with `password`), created
        on `pod` first if missing."""
        rows = self._run(pod, tsql("certificate-export.sql.j2", ag_name=self.ag_name, password=tsql_string(password)),
                         fetch=True)
        if not rows or not rows[0].get("certificate") or not rows[0].get("private_key"):
            raise DriverError(f"{pod}: no endpoint certificate to export")
        return bytes(rows[0]["certificate"]), bytes(rows[0]["private_key"])

    def import_certificate(self, pod: str, password: str, certificate: bytes, private_key: bytes) -> None:
        self._run(pod, tsql("certificate-import.sql.j2", password=tsql_string(password),
                            certificate="0x" + certificate.hex(), private_key="0x" + private_key.hex()))

    def run_script(self, pod: str, script: str) -> None:
        """A script of `GO`-separated batches (ag-bootstrap.sql), one batch at a time."""
        for batch in batches(script):
            self._run(pod, batch)

    def write_probe(self, pod: str) -> bool:
        try:
            self._run(pod, f"USE [{self.database}];\n" + tsql("heartbeat.sql.j2", instance=pod))
            return True
        except DriverError:
            return False


def observation(pod: str, row: dict, labelled: str | None) -> Observation:
    """One row of observe.sql -> what the failover manager decides on."""
    role = {"PRIMARY": "primary", "SECONDARY": "standby"}.get(str(row.get("role")).upper(), "unknown")
    online = str(row.get("database_state") or "").upper() == "ONLINE"
    synchronized = str(row.get("synchronization_state") or "").upper() == "SYNCHRONIZED"
    synchronous = str(row.get("availability_mode") or "").upper() == "SYNCHRONOUS_COMMIT" and synchronized
    connected = str(row.get("connected_state") or "").upper() == "CONNECTED"
    # a secondary follows the primary it is connected to; a disconnected one follows nobody
    upstream = row.get("primary_replica") if role == "standby" and connected else None
    return Observation(pod, True, role, online, int(row["sequence_number"]) if row.get("sequence_number") is not None else None,
                       synchronous, upstream, connected and role == "standby", labelled_role=labelled)


@dataclass
class Replica:
    role: str = "standby"              # primary | standby | down | outside (in no availability group)
    sequence: int = 0
    synchronous_commit: bool = True
    synchronized: bool = True
    primary: str | None = None


@dataclass
class InMemoryAvailabilityGroup:
    """An availability group in memory, behaving as SQL Server does for the driver's calls:
    FAILOVER (not forced) is refused unless the target is a SYNCHRONIZED synchronous-commit
    secondary; a demoted primary stops accepting writes; a write on the primary commits only
    with `required` synchronized secondaries connected. Used to exercise the shared decisions."""

    replicas: dict[str, Replica]
    required: int = 1
    allow_data_loss: bool = False
    log: list[str] = field(default_factory=list)
    certificates: dict[str, bytes] = field(default_factory=dict)   # pod -> its endpoint certificate

    def observe(self, pods: list[str], labels: dict[str, str | None]) -> list[Observation]:
        out = []
        for pod in pods:
            r = self.replicas.get(pod)
            if r is None or r.role == "down":
                out.append(Observation(pod, False, labelled_role=labels.get(pod)))
                continue
            if r.role == "outside":  # observe.sql returns no row: reachable, in no group
                out.append(Observation(pod, True, "unknown", labelled_role=labels.get(pod)))
                continue
            primary = self._primary()
            streaming = r.role == "standby" and r.primary is not None and r.primary == primary
            out.append(Observation(pod, True, "primary" if r.role == "primary" else "standby", True, r.sequence,
                                   r.synchronous_commit and r.synchronized, r.primary if streaming else None,
                                   streaming, labelled_role=labels.get(pod)))
        return out

    def _primary(self) -> str | None:
        return next((p for p, r in self.replicas.items() if r.role == "primary"), None)

    def _alive(self, pod: str) -> Replica:
        r = self.replicas.get(pod)
        if r is None or r.role == "down":
            raise DriverError(f"{pod}: unreachable")
        return r

    def fence(self, pod: str) -> None:
        self._alive(pod).role = "standby"
        self.log.append(f"demote {pod}")

    def detach(self, pod: str) -> None:
        self._alive(pod).primary = None
        self.log.append(f"detach {pod}")

    def promote(self, pod: str) -> None:
        r = self._alive(pod)
        if not (r.synchronous_commit and r.synchronized) and not self.allow_data_loss:
            raise DriverError(f"{pod}: FAILOVER refused, the replica is not SYNCHRONIZED (error 41142)")
        if self._primary() not in (None, pod):
            raise DriverError(f"{pod}: another replica is still primary")
        r.role, r.primary = "primary", None
        r.sequence += 1
        for other, replica in self.replicas.items():
            if other != pod and replica.role == "standby":
                replica.synchronized = False  # suspended until they follow
        self.log.append(f"promote {pod}")

    def follow(self, pod: str, primary: str) -> None:
        r = self._alive(pod)
        r.role, r.primary, r.synchronized = "standby", primary, True
        r.sequence = self.replicas[primary].sequence
        self.log.append(f"follow {pod} {primary}")

    def export_certificate(self, pod: str, password: str) -> tuple[bytes, bytes]:
        self._alive(pod)
        cert = self.certificates.setdefault(pod, f"cert-of-{pod}".encode())
        return cert, b"key:" + password.encode()

    def import_certificate(self, pod: str, password: str, certificate: bytes, private_key: bytes) -> None:
        self._alive(pod)
        if private_key != b"key:" + password.encode():
            raise DriverError(f"{pod}: the private key does not decrypt with this password")
        self.certificates.setdefault(pod, certificate)
        self.log.append(f"certificate {pod}")

    def run_script(self, pod: str, script: str) -> None:
        """ag-bootstrap.sql: CREATE AVAILABILITY GROUP makes `pod` the primary; JOIN makes it a
        secondary of the group's primary, refused (as the endpoint handshake would fail) unless
        both replicas hold the same certificate."""
        r = self._alive(pod)
        if "CREATE AVAILABILITY GROUP" in script:
            if self._primary() not in (None, pod):
                raise DriverError(f"{pod}: the availability group exists already")
            r.role, r.primary, r.sequence = "primary", None, max(r.sequence, 1)
            self.log.append(f"create {pod}")
        elif "JOIN WITH (CLUSTER_TYPE = EXTERNAL)" in script:
            primary = self._primary()
            if primary is None or self.certificates.get(pod) != self.certificates.get(primary):
                raise DriverError(f"{pod}: cannot join (no primary, or the endpoint certificates differ)")
            r.role, r.primary, r.synchronized = "standby", primary, True
            r.sequence = self.replicas[primary].sequence
            self.log.append(f"join {pod}")
        else:
            raise DriverError(f"{pod}: not an availability-group bootstrap script")

    def write_probe(self, pod: str) -> bool:
        r = self.replicas.get(pod)
        if r is None or r.role != "primary":
            return False
        ready = [p for p, x in self.replicas.items()
                 if x.role == "standby" and x.primary == pod and x.synchronized and x.synchronous_commit]
        if len(ready) < self.required:
            return False
        r.sequence += 1
        for p in ready:
            self.replicas[p].sequence = r.sequence
        return True
