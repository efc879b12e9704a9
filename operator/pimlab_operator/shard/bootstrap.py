"""A SQL Server availability group's bootstrap: who still has to be put into it (pure), and
carrying that out through the driver (tests/operator/test_sqlserver.py).

PostgreSQL instances bootstrap themselves (pimlab/instance/plan.py); SQL Server replicas are
bootstrapped by the operator over pyodbc, from what each replica reports through observe.sql
(a replica that is in no availability group is reachable with role `unknown`):

* nobody is in the group yet: create it on the initial primary first (certificate, endpoint,
  `CREATE AVAILABILITY GROUP ... CLUSTER_TYPE = EXTERNAL`), then join every other replica that
  answers — but only if the initial primary answers: the group is never created elsewhere;
* the group exists (someone reports primary): replicas that answer outside it join as secondaries;
* someone is a secondary but nobody answers as primary: nothing to bootstrap — that is a
  failover, decided by failover.decide, never a second group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pimlab_operator.shard.failover import Observation
from pimlab_operator.shard.failover_pass import DriverError


@dataclass(frozen=True)
class BootstrapStep:
    pod: str
    role: str  # primary: creates the group and the certificate; secondary: imports it and joins


def _outside(o: Observation) -> bool:
    return o.reachable and o.role not in ("primary", "standby")


def bootstrap_steps(observations: list[Observation], initial_primary: str) -> list[BootstrapStep]:
    members = [o for o in observations if o.reachable and o.role in ("primary", "standby")]
    if any(o.role == "primary" for o in members):
        return [BootstrapStep(o.pod, "secondary") for o in observations if _outside(o)]
    if members:
        return []
    first = next((o for o in observations if o.pod == initial_primary and _outside(o)), None)
    if first is None:
        return []
    return [BootstrapStep(first.pod, "primary")] + [
        BootstrapStep(o.pod, "secondary") for o in observations if o.pod != first.pod and _outside(o)]



def carry_out(driver, steps: list[BootstrapStep], password: str, script: Callable[[str], str],
              group_primary: str | None) -> tuple[list[BootstrapStep], list[str]]:
    """(the steps done, errors). The certificate comes from the replica that creates the group
    (or from the group's primary, for a late joiner); a step that fails stops the ones after it
    only when it was the creation (secondaries cannot join a group that does not exist)."""
    done, errors = [], []
    source = next((s.pod for s in steps if s.role == "primary"), group_primary)
    if not steps or source is None:
        return [], ([] if not steps else ["no replica of the group to take the endpoint certificate from"])
    try:
        certificate = driver.export_certificate(source, password)
    except DriverError as error:
        return [], [f"certificate from {source}: {error}"]
    for step in steps:
        try:
            if step.role == "secondary":
                driver.import_certificate(step.pod, password, *certificate)
            driver.run_script(step.pod, script(step.role))
            done.append(step)
        except DriverError as error:
            errors.append(f"{step.role} {step.pod}: {error}")
            if step.role == "primary":
                break
    return done, errors
