"""The lab's custom resources as pydantic models: the single source of truth for the CRDs.

`crdgen` turns these models into the YAML in `crds/`; the operator parses objects with them.
"""

from pimlab_operator.api.chaos import ChaosExperiment, ChaosExperimentSpec, ChaosExperimentStatus
from pimlab_operator.api.lab import Lab, LabSpec, LabStatus
from pimlab_operator.api.personaload import PersonaLoad, PersonaLoadSpec, PersonaLoadStatus
from pimlab_operator.api.shard import Shard, ShardSpec, ShardStatus
from pimlab_operator.api.slo import SLO, SLOSpec, SLOStatus

#: Every kind of the group, in the order the CRDs are generated and documented.
KINDS = (Lab, Shard, PersonaLoad, ChaosExperiment, SLO)

__all__ = [
    "KINDS",
    "ChaosExperiment",
    "ChaosExperimentSpec",
    "ChaosExperimentStatus",
    "Lab",
    "LabSpec",
    "LabStatus",
    "PersonaLoad",
    "PersonaLoadSpec",
    "PersonaLoadStatus",
    "SLO",
    "SLOSpec",
    "SLOStatus",
    "Shard",
    "ShardSpec",
    "ShardStatus",
]
