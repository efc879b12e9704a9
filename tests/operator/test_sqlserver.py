"""The SQL Server path as far as it can be checked here (no SQL Server runs on these machines):
every T-SQL template parses with sqlglot's T-SQL dialect, the pyodbc driver sends the right
statements, and the shared failover decisions drive an in-memory availability group."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import re

import pytest
import sqlglot
from sqlglot import exp

from pimlab_operator.render import project_home
from pimlab_operator.shard.drivers import sqlserver
from pimlab_operator.shard.drivers.sqlserver import (
    InMemoryAvailabilityGroup, Replica, SqlServerDriver, Target, batches, observation, tsql)
from pimlab_operator.shard.bootstrap import BootstrapStep, bootstrap_steps, carry_out
from pimlab_operator.shard.failover import Memory, Observation, Policy
from pimlab_operator.shard.failover_pass import run_pass

from cr_samples import by, sample, spec_of
from pimlab_operator.shard import desired as shard

#: Statements sqlglot keeps as opaque commands (it has no grammar for HADR DDL); anything else
#: must parse into a real expression.
HADR_COMMANDS = ("ALTER AVAILABILITY GROUP", "CREATE AVAILABILITY GROUP", "ALTER ENDPOINT", "CREATE ENDPOINT",
                 "ALTER DATABASE", "BACKUP DATABASE", "CREATE MASTER KEY", "CREATE CERTIFICATE")


def _scripts() -> dict[str, str]:
    body = sample("Shard", "shard-00")
    out = {"ag-primary": shard.ag_sql(body, spec_of(body), "primary"),
           "ag-secondary": shard.ag_sql(body, spec_of(body), "secondary"),
           "observe": tsql("observe.sql.j2", ag_name="shard-00"),
           "promote": tsql("promote.sql.j2", ag_name="shard-00", force=False),
           "promote-forced": tsql("promote.sql.j2", ag_name="shard-00", force=True),
           "demote": tsql("demote.sql.j2", ag_name="shard-00"),
           "resume": tsql("resume.sql.j2", database="pim"),
           "heartbeat": tsql("heartbeat.sql.j2", instance="shard-00-1"),
           "certificate-export": tsql("certificate-export.sql.j2", ag_name="shard-00", password="Pw-1"),
           "certificate-import": tsql("certificate-import.sql.j2", password="Pw-1", certificate="0x3082", private_key="0x1eab")}
    assert {p.name for p in (project_home() / "templates/shard/sqlserver").iterdir()} == {
        "observe.sql.j2", "promote.sql.j2", "demote.sql.j2", "resume.sql.j2", "heartbeat.sql.j2",
        "certificate-export.sql.j2", "certificate-import.sql.j2"}
    return out


def test_the_readiness_probe_logs_in_with_sqlcmd_and_runs_a_query():
    """Ready means SQL Server takes a login and answers, not that its port accepts a TCP
    connection: the operator bootstraps the availability group on Ready pods only."""
    body = sample("Shard", "shard-00")
    container = by(shard.desired_children(body, spec_of(body), None), "StatefulSet", "shard-00")[
        "spec"]["template"]["spec"]["containers"][0]
    probe = container["readinessProbe"]
    assert "tcpSocket" not in probe
    command = probe["exec"]["command"]
    assert command[0] == "/opt/mssql-tools18/bin/sqlcmd"
    assert command[command.index("-U") + 1] == "sa" and "-C" in command and "-b" in command
    assert "-P" not in command, "the password comes from SQLCMDPASSWORD, never the command line"
    assert int(command[command.index("-l") + 1]) < probe["timeoutSeconds"]
    env = {e["name"]: e for e in container["env"]}
    assert env["SQLCMDPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "shard-00-credentials", "key": "password"}
    query = command[command.index("-Q") + 1]
    statements = [s for s in sqlglot.parse(query, read="tsql", error_level=sqlglot.ErrorLevel.RAISE) if s]
    assert any(isinstance(s, exp.Select) for s in statements), query
    assert not any(isinstance(s, exp.Command) for s in statements), query


@pytest.mark.parametrize("name", list(_scripts()))
def test_every_tsql_template_parses_with_sqlglot(name):
    script = _scripts()[name]
    for batch in batches(script):
        if batch.upper().startswith("BACKUP DATABASE"):  # no grammar in sqlglot at all: checked by shape
            assert re.fullmatch(r"BACKUP DATABASE \[\w+\] TO DISK = N'NUL';", batch), batch
            continue
        for statement in sqlglot.parse(batch, read="tsql", error_level=sqlglot.ErrorLevel.RAISE):
            if statement is None:
                continue
            if isinstance(statement, exp.Command):
                text = statement.sql("tsql").upper()
                assert text.startswith(HADR_COMMANDS), f"{name}: unparsed statement {text[:80]}"


def test_promote_runs_in_the_external_cluster_session_and_forces_only_when_allowed():
    promote = _scripts()["promote"]
    assert "sp_set_session_context @key = N'external_cluster', @value = N'yes'" in promote
    assert "ALTER AVAILABILITY GROUP [shard-00] FAILOVER;" in promote and "FORCE" not in promote
    assert "FORCE_FAILOVER_ALLOW_DATA_LOSS" in _scripts()["promote-forced"]
    assert "SET (ROLE = SECONDARY)" in _scripts()["demote"]


class FakeCursor:
    def __init__(self, conn):
        self.conn, self.description = conn, None

    def execute(self, sql):
        self.conn.log.append((self.conn.target.host, sql))
        if "sys.availability_groups" in sql:
            self.description = [(c,) for c in self.conn.row]

    def fetchall(self):
        return [tuple(self.conn.row.values())]


class FakeConnection:
    def __init__(self, target, row, log):
        self.target, self.row, self.log = target, row, log

    def cursor(self):
        return FakeCursor(self)

    def close(self):
        pass


def test_pyodbc_driver_maps_the_dmvs_and_sends_the_templates():
    log = []
    rows = {"p0": {"role": "PRIMARY", "connected_state": "CONNECTED", "synchronization_state": "SYNCHRONIZED",
                   "database_state": "ONLINE", "availability_mode": "SYNCHRONOUS_COMMIT", "primary_replica": "shard-00-0",
                   "sequence_number": 42},
            "p1": {"role": "SECONDARY", "connected_state": "CONNECTED", "synchronization_state": "SYNCHRONIZED",
                   "database_state": "ONLINE", "availability_mode": "SYNCHRONOUS_COMMIT", "primary_replica": "shard-00-0",
                   "sequence_number": 42}}

    def connect(target):
        if target.host == "p2":
            raise OSError("connection refused")
        return FakeConnection(target, rows[target.host], log)

    driver = SqlServerDriver({"shard-00-0": Target("p0"), "shard-00-1": Target("p1"), "shard-00-2": Target("p2")},
                             "shard-00", connect=connect)
    observed = driver.observe(["shard-00-0", "shard-00-1", "shard-00-2"], {})
    assert [(o.pod, o.role, o.reachable, o.synchronous, o.streaming, o.position) for o in observed] == [
        ("shard-00-0", "primary", True, True, False, 42), ("shard-00-1", "standby", True, True, True, 42),
        ("shard-00-2", "unknown", False, False, False, None)]
    driver.promote("shard-00-1")
    assert "FAILOVER" in log[-1][1] and log[-1][0] == "p1"
    with pytest.raises(sqlserver.DriverError):
        driver.fence("shard-00-2")


def test_an_asynchronous_or_unsynchronized_secondary_is_not_synchronous():
    row = {"role": "SECONDARY", "connected_state": "CONNECTED", "synchronization_state": "SYNCHRONIZING",
           "database_state": "ONLINE", "availability_mode": "SYNCHRONOUS_COMMIT", "sequence_number": 7}
    assert not observation("x", row, None).synchronous
    assert not observation("x", {**row, "synchronization_state": "SYNCHRONIZED",
                                 "availability_mode": "ASYNCHRONOUS_COMMIT"}, None).synchronous


T0 = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
PODS = ["shard-00-0", "shard-00-1", "shard-00-2"]


def _ag(**overrides):
    replicas = {"shard-00-0": Replica("primary", 10), "shard-00-1": Replica("standby", 10, True, True, "shard-00-0"),
                "shard-00-2": Replica("standby", 12, True, False, "shard-00-0")}  # SYNCHRONIZING, yet "ahead"
    replicas.update(overrides)
    return InMemoryAvailabilityGroup(replicas, required=1)


def _drive(ag, policy, passes=6):
    labels = {"shard-00-0": "primary", "shard-00-1": "secondary", "shard-00-2": "secondary"}
    memory, completed, results = Memory("shard-00-0"), [], []
    clock = [T0]
    for _ in range(passes):
        result = run_pass(ag, PODS, dict(labels), lambda p, r: labels.__setitem__(p, r), policy, memory, 1,
                          now=lambda: clock[0])
        memory = result.memory
        results.append(result)
        if result.completed:
            completed.append(result.completed)
        clock[0] += timedelta(seconds=10)
    return labels, completed, results


def test_in_memory_ag_fails_over_to_the_synchronized_replica_not_the_further_unsynchronized_one():
    ag = _ag()
    ag.replicas["shard-00-0"].role = "down"
    labels, completed, _ = _drive(ag, Policy(unhealthy_after_seconds=15))
    assert completed and completed[0].from_ == "shard-00-0" and completed[0].to == "shard-00-1"
    assert labels["shard-00-1"] == "primary" and labels["shard-00-0"] is None
    assert "promote shard-00-1" in ag.log and "promote shard-00-2" not in ag.log
    assert completed[0].duration_seconds >= 0 and completed[0].outage_seconds >= 15


def test_in_memory_ag_refuses_without_a_synchronized_replica_unless_data_loss_is_allowed():
    ag = _ag()
    ag.replicas["shard-00-0"].role = "down"
    ag.replicas["shard-00-1"].role = "down"
    labels, completed, results = _drive(ag, Policy(unhealthy_after_seconds=15))
    assert not completed
    assert results[-1].decision.refused and results[-1].decision.reason == "NoSafeStandby"
    assert not [line for line in ag.log if line.startswith("promote")]
    forced = _ag()
    forced.allow_data_loss = True
    forced.replicas["shard-00-0"].role = "down"
    forced.replicas["shard-00-1"].role = "down"
    labels, completed, results = _drive(forced, Policy(unhealthy_after_seconds=15, allow_data_loss=True))
    assert "promote shard-00-2" in forced.log and any(r.decision.data_loss for r in results)


def test_in_memory_ag_demotes_a_second_primary():
    ag = _ag(**{"shard-00-2": Replica("primary", 11)})
    labels, _, _ = _drive(ag, Policy(), passes=1)
    assert "demote shard-00-2" in ag.log and ag.replicas["shard-00-0"].role == "primary"


# --------------------------------------------------------------------------- the AG's bootstrap

def _seen(pod, role="unknown", reachable=True):
    return Observation(pod, reachable, role, reachable)


def test_bootstrap_creates_the_group_on_the_initial_primary_first_then_joins_the_others():
    fresh = [_seen("shard-00-0"), _seen("shard-00-1"), _seen("shard-00-2", reachable=False)]
    assert bootstrap_steps(fresh, "shard-00-0") == [BootstrapStep("shard-00-0", "primary"),
                                                    BootstrapStep("shard-00-1", "secondary")]
    # the group is never created anywhere but on the initial primary
    assert bootstrap_steps(fresh, "shard-00-2") == []


def test_bootstrap_joins_late_replicas_and_never_makes_a_second_group():
    existing = [_seen("shard-00-0", "primary"), _seen("shard-00-1", "standby"), _seen("shard-00-2")]
    assert bootstrap_steps(existing, "shard-00-0") == [BootstrapStep("shard-00-2", "secondary")]
    # a secondary without a primary in sight is a failover, not a bootstrap
    orphaned = [_seen("shard-00-0", reachable=False), _seen("shard-00-1", "standby"), _seen("shard-00-2")]
    assert bootstrap_steps(orphaned, "shard-00-1") == []
    assert bootstrap_steps([_seen("shard-00-0", "primary"), _seen("shard-00-1", "standby")], "shard-00-0") == []


def _outside_ag():
    return InMemoryAvailabilityGroup({p: Replica("outside", 0, True, False, None) for p in PODS}, required=1)


def test_in_memory_ag_is_bootstrapped_then_fails_over_through_the_same_manager():
    ag, password = _outside_ag(), "S3cret-pw"
    body = sample("Shard", "shard-00")
    steps = bootstrap_steps(ag.observe(PODS, {}), "shard-00-0")
    done, errors = carry_out(ag, steps, password, lambda role: shard.ag_sql(body, spec_of(body), role), None)
    assert errors == [] and [s.role for s in done] == ["primary", "secondary", "secondary"]
    assert ag.log == ["create shard-00-0", "certificate shard-00-1", "join shard-00-1",
                      "certificate shard-00-2", "join shard-00-2"]
    labels: dict[str, str | None] = {}
    result = run_pass(ag, PODS, labels, lambda p, r: labels.__setitem__(p, r), Policy(), Memory(), 1, now=lambda: T0)
    assert result.decision.reason == "Bootstrapped" and result.memory.current_primary == "shard-00-0"
    assert labels == {"shard-00-0": "primary", "shard-00-1": "secondary", "shard-00-2": "secondary"}
    ag.replicas["shard-00-0"].role = "down"
    _, completed, _ = _drive(ag, Policy(unhealthy_after_seconds=15))
    assert completed and completed[0].to in ("shard-00-1", "shard-00-2")


def test_bootstrap_stops_when_the_group_cannot_be_created_and_a_wrong_key_cannot_join():
    ag = _outside_ag()
    ag.replicas["shard-00-0"].role = "primary"  # someone else's group already: creation refused
    ag.replicas["shard-00-1"].role = "outside"
    steps = [BootstrapStep("shard-00-1", "primary"), BootstrapStep("shard-00-2", "secondary")]
    done, errors = carry_out(ag, steps, "pw", lambda role: "CREATE AVAILABILITY GROUP x", None)
    assert done == [] and len(errors) == 1 and errors[0].startswith("primary shard-00-1")

    class WrongKey(InMemoryAvailabilityGroup):
        def export_certificate(self, pod, password):
            cert, _ = super().export_certificate(pod, password)
            return cert, b"key:another"
    ag = WrongKey({p: Replica("outside") for p in PODS})
    ag.replicas["shard-00-0"] = Replica("primary", 3)
    done, errors = carry_out(ag, [BootstrapStep("shard-00-1", "secondary")], "pw",
                             lambda role: "ALTER AVAILABILITY GROUP [x] JOIN WITH (CLUSTER_TYPE = EXTERNAL);", "shard-00-0")
    assert done == [] and "does not decrypt" in errors[0] and ag.replicas["shard-00-1"].role == "outside"


class CertificateCursor:
    def __init__(self, log):
        self.log, self.description = log, None

    def execute(self, sql):
        self.log.append(sql)
        self.description = [("certificate",), ("private_key",)] if "CERTPRIVATEKEY" in sql else None

    def fetchall(self):
        return [(b"\x30\x82", b"\x1e\xab")]


def test_pyodbc_driver_copies_the_certificate_as_binary_and_keeps_the_password_out_of_errors():
    log = []
    password = "Quote'd-Pw-123"

    class Conn:
        def __init__(self, target):
            self.target = target

        def cursor(self):
            if self.target.host == "down":
                raise RuntimeError(f"login failed for PWD={password}")
            return CertificateCursor(log)

        def close(self):
            pass

    driver = SqlServerDriver({"a": Target("p0"), "b": Target("p1"), "c": Target("down")}, "shard-00", connect=Conn)
    cert, key = driver.export_certificate("a", password)
    assert (cert, key) == (b"\x30\x82", b"\x1e\xab") and "N'Quote''d-Pw-123'" in log[-1]
    driver.import_certificate("b", password, cert, key)
    assert "FROM BINARY = 0x3082" in log[-1] and "BINARY = 0x1eab" in log[-1]
    body = sample("Shard", "shard-00")
    driver.run_script("b", shard.ag_sql(body, spec_of(body), "secondary"))
    assert [line.split()[0] for line in log[-2:]] == ["IF", "ALTER"] and "JOIN WITH (CLUSTER_TYPE = EXTERNAL)" in log[-2]
    with pytest.raises(sqlserver.DriverError) as failure:
        driver.export_certificate("c", password)
    assert password not in str(failure.value)


def test_a_pass_that_fences_goes_straight_on_to_promote():
    """The fence returns once the old primary is demoted: positions are compared in the same
    pass, not a timer tick later."""
    ag = _ag()
    labels = {"shard-00-0": "primary", "shard-00-1": "secondary", "shard-00-2": "secondary"}
    result = run_pass(ag, PODS, labels, lambda p, r: labels.__setitem__(p, r), Policy(planned_primary="shard-00-1"),
                      Memory("shard-00-0"), 1, now=lambda: T0)
    assert ag.log[:4] == ["demote shard-00-0", "detach shard-00-1", "detach shard-00-2", "promote shard-00-1"]
    assert labels["shard-00-1"] == "primary" and result.decision.reason in ("Promoting", "ConfirmingWrites")
    assert "Fencing" in [e.reason for e in result.events]


def test_the_old_primary_is_brought_back_only_after_the_new_primary_proved_itself():
    """A crashed primary comes back as a standby that may need a rewind or a fresh clone: that
    must not delay the first acknowledged write, even though it reports `standby`."""
    class Probed(InMemoryAvailabilityGroup):
        def write_probe(self, pod):
            self.log.append(f"probe {pod}")
            return super().write_probe(pod)
    ag = Probed({"shard-00-0": Replica("standby", 9, True, True, None),   # restarted after a crash
                 "shard-00-1": Replica("standby", 10, True, True, None), "shard-00-2": Replica("standby", 10, True, True, None)})
    memory = Memory("shard-00-0", unhealthy_since=T0, failover_started_at=T0, failover_from="shard-00-0",
                    failover_reason="PrimaryUnhealthy")
    labels = {"shard-00-0": None, "shard-00-1": "secondary", "shard-00-2": "secondary"}
    result = run_pass(ag, PODS, labels, lambda p, r: labels.__setitem__(p, r), Policy(), memory, 1, now=lambda: T0)
    assert result.completed and ag.log == ["promote shard-00-1", "follow shard-00-2 shard-00-1", "probe shard-00-1",
                                           "follow shard-00-0 shard-00-1"]
