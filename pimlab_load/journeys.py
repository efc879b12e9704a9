"""Personas, their journeys, and the synthetic population they act on.

A journey is what one arrival does: a few API calls with the persona's think time between
them. The population is `population.patients` synthetic patients; patient i's id is derived
from the seed (registration by the front desk with a deterministic Idempotency-Key), so every
engine pod and every run with the same seed addresses the same patients, spread over every
shard by the services' own hash. A journey registers its patient first when this engine has not
seen it registered (a replay if another pod did).

The role (token persona) of a call is the persona's name when the journey allows it, else the
journey's first role: `{name: patient}` books for itself, a clinician books for its patient.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol

from api_services.domain.ids import new_patient_id
from pimlab_operator.personaload.model import STANDARD_JOURNEYS

#: Who may run each journey, first = the role used for a persona of another name.
JOURNEY_ROLES: dict[str, tuple[str, ...]] = {
    "registerPatient": ("patient", "admin"),
    "bookEncounter": ("patient", "clinician"),
    "reviewEncounter": ("patient", "clinician"),
    "checkBilling": ("patient", "admin"),
    "documentEncounter": ("clinician",),
    "submitClaim": ("admin",),
    "readKpis": ("admin",),
}
JOURNEYS = tuple(JOURNEY_ROLES)
__all__ = ["STANDARD_JOURNEYS", "JOURNEYS", "JOURNEY_ROLES", "Journeys", "Population", "PersonaPlan"]
#: The lab's front desk: registers the population (its user id seeds the patient ids).
FRONT_DESK = "load-frontdesk"
PROVIDERS = [f"prv-{i:04d}" for i in range(1, 21)]
FACILITIES = [f"fac-{i:03d}" for i in range(1, 6)]
SYLLABLES = ["ka", "lo", "mi", "ra", "ten", "vo", "zu", "bel", "dor", "fen"]


#: A clinician's notes for a routine visit (what documentEncounter and submitClaim write).
NOTES = {"notes": "Seen for follow-up. Plan discussed, review in two weeks.",
         "diagnoses": [{"code": "Z00.00", "description": "General adult medical examination"}],
         "procedures": [{"code": "99213", "description": "Office visit, established patient"}]}


class Abort(Exception):
    """A call failed, was dropped or the run is stopping: the journey ends here."""


class Calls(Protocol):
    """What a journey needs from the dispatcher (one per arrival)."""

    rng: random.Random

    async def call(self, method: str, path: str, role: str, user: str, *, body: dict | None = None,
                   idempotency_key: str | None = None, patient: str | None = None,
                   expect: tuple[int, ...] = (200,)) -> tuple[int, object]: ...

    async def think(self) -> None: ...


@dataclass(frozen=True)
class PersonaPlan:
    name: str
    weight: int
    journeys: tuple[str, ...]
    think_min: float
    think_max: float

    def role_for(self, journey: str) -> str:
        roles = JOURNEY_ROLES[journey]
        return self.name if self.name in roles else roles[0]


@dataclass(frozen=True)
class Draw:
    """What arrival i does, from the seed alone: the same for any pod count and any run."""

    persona: PersonaPlan
    journey: str
    patient: int
    invalid: bool


def arrival_rng(seed: int, index: int) -> random.Random:
    return random.Random(seed * 1_000_003 + index)


def draw(rng: random.Random, personas: list[PersonaPlan], population: int, invalid_ratio: float) -> Draw:
    """The arrival's persona (by weight), journey (uniform among the persona's), patient and
    whether it is sent malformed; drawn first, so later draws (think times, jitter) that depend
    on answers never shift them."""
    persona = rng.choices(personas, [p.weight for p in personas])[0]
    return Draw(persona, rng.choice(persona.journeys), rng.randrange(population), rng.random() < invalid_ratio)


class Population:
    """Patient i's id, registration body and what this engine learnt about it."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed = size, seed
        self.registered: set[int] = set()
        self.encounters: dict[int, list[str]] = {}
        self.claims: dict[int, list[str]] = {}

    def patient_id(self, i: int) -> str:
        return new_patient_id(FRONT_DESK, self.registration_key(i))

    def registration_key(self, i: int) -> str:
        return f"pop-{self.seed}-{i}"

    def registration(self, i: int) -> dict:
        rng = random.Random(f"{self.seed}:{i}")
        part = lambda: "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()  # noqa: E731
        return {"pseudonym": f"{part()} {part()}", "birth_year": rng.randint(1940, 2020),
                "sex": rng.choice(["F", "M", "X"])}


class Journeys:
    """The journeys of one engine; `run_key` makes write keys unique per run and arrival."""

    def __init__(self, population: Population, run_key: str):
        self.population = population
        self.run_key = run_key

    def user_for(self, role: str, patient_index: int, rng: random.Random) -> str:
        if role == "patient":
            return self.population.patient_id(patient_index)
        return f"load-{role}-{rng.randrange(50):02d}"

    # -- steps shared by journeys -----------------------------------------------------------

    async def _register(self, calls: Calls, i: int, force: bool = False) -> str:
        patient = self.population.patient_id(i)
        if force or i not in self.population.registered:
            status, body = await calls.call("POST", "/patients", "admin", FRONT_DESK,
                                            body=self.population.registration(i),
                                            idempotency_key=self.population.registration_key(i),
                                            patient=patient, expect=(201,))
            self.population.registered.add(i)
            await calls.think()
        return patient

    async def _encounter(self, calls: Calls, i: int, role: str, user: str, arrival: int) -> str:
        known = self.population.encounters.get(i)
        if known:
            return calls.rng.choice(known)
        return await self._book(calls, i, role, user, arrival)

    async def _book(self, calls: Calls, i: int, role: str, user: str, arrival: int) -> str:
        patient = self.population.patient_id(i)
        rng = calls.rng
        body = {"patient_id": patient, "provider_id": rng.choice(PROVIDERS), "facility_id": rng.choice(FACILITIES),
                "scheduled_for": f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T09:30:00Z",
                "reason": rng.choice(["annual check-up", "follow-up visit", "knee pain", "vaccination"])}
        _, answer = await calls.call("POST", "/encounters", role, user, body=body,
                                     idempotency_key=f"{self.run_key}-book-{arrival}", patient=patient,
                                     expect=(202,))
        encounter = answer["tracking_id"]
        self.population.encounters.setdefault(i, []).append(encounter)
        await calls.think()
        return encounter

    # -- the journeys ------------------------------------------------------------------------

    async def registerPatient(self, calls: Calls, persona: PersonaPlan, i: int, arrival: int) -> None:
        patient = await self._register(calls, i, force=True)
        role = persona.role_for("registerPatient")
        await calls.call("GET", f"/patients/{patient}", role, self.user_for(role, i, calls.rng), patient=patient)

    async def bookEncounter(self, calls: Calls, persona: PersonaPlan, i: int, arrival: int) -> None:
        await self._register(calls, i)
        role = persona.role_for("bookEncounter")
        user = self.user_for(role, i, calls.rng)
        await calls.call("GET", "/providers", role, user)
        await calls.think()
        await self._book(calls, i, role, user, arrival)

    async def reviewEncounter(self, calls: Calls, persona: PersonaPlan, i: int, arrival: int) -> None:
        patient = await self._register(calls, i)
        role = persona.role_for("reviewEncounter")
        user = self.user_for(role, i, calls.rng)
        _, listed = await calls.call("GET", f"/patients/{patient}/encounters", role, user, patient=patient)
        if listed:
            ids = [e["encounter_id"] for e in listed]
            self.population.encounters[i] = ids
            await calls.think()
            await calls.call("GET", f"/encounters/{calls.rng.choice(ids)}", role, user, patient=patient)

    async def checkBilling(self, calls: Calls, persona: PersonaPlan, i: int, arrival: int) -> None:
        patient = await self._register(calls, i)
        role = persona.role_for("checkBilling")
        user = self.user_for(role, i, calls.rng)
        if role == "patient":
            await calls.call("GET", f"/patients/{patient}/encounters", role, user, patient=patient)
        else:
            await calls.call("GET", f"/patients/{patient}", role, user, patient=patient)
        claims = self.population.claims.get(i)
        if claims:
            await calls.think()
            await calls.call("GET", f"/claims/{calls.rng.choice(claims)}", role, user, patient=patient)

    async def documentEncounter(self, calls: Calls, persona: PersonaPlan, i: int, arrival: int) -> None:
        patient = await self._register(calls, i)
        user = self.user_for("clinician", i, calls.rng)
        encounter = await self._encounter(calls, i, "clinician", user, arrival)
        await calls.call("PATCH", f"/encounters/{encounter}/notes", "clinician", user, body=NOTES, patient=patient)

    async def submitClaim(self, calls: Calls, persona: PersonaPlan, i: int, arrival: int) -> None:
        patient = await self._register(calls, i)
        # The clinic books and documents a visit, then the admin bills it: a claim needs a
        # documented encounter, and an encounter has at most one open claim.
        clinician = self.user_for("clinician", i, calls.rng)
        encounter = await self._book(calls, i, "clinician", clinician, arrival)
        await calls.call("PATCH", f"/encounters/{encounter}/notes", "clinician", clinician, body=NOTES, patient=patient)
        user = self.user_for("admin", i, calls.rng)
        body = {"encounter_id": encounter, "amount_cents": calls.rng.randint(5_000, 250_000),
                "payer": calls.rng.choice(["Synthetic Health Plan", "Lab Mutual", "Demo Care"])}
        _, answer = await calls.call("POST", "/claims", "admin", user, body=body,
                                     idempotency_key=f"{self.run_key}-claim-{arrival}", patient=patient,
                                     expect=(202,))
        claim = answer["tracking_id"]
        self.population.claims.setdefault(i, []).append(claim)
        await calls.think()
        await calls.call("GET", f"/claims/{claim}", "admin", user, patient=patient)

    async def readKpis(self, calls: Calls, persona: PersonaPlan, i: int, arrival: int) -> None:
        await calls.call("GET", "/kpis/financial", persona.role_for("readKpis"), self.user_for("admin", i, calls.rng))

    # -- failure pressure: a malformed request the API must refuse with a 4xx --------------

    async def invalid(self, calls: Calls, persona: PersonaPlan, journey: str, i: int) -> None:
        role = persona.role_for(journey)
        user = self.user_for(role, i, calls.rng)
        patient = self.population.patient_id(i)
        bad = {
            "registerPatient": ("POST", "/patients", "admin", {"pseudonym": "", "birth_year": 1800}),
            "bookEncounter": ("POST", "/encounters", role, {"patient_id": patient, "provider_id": "nobody"}),
            "reviewEncounter": ("GET", "/encounters/enc-not-an-id", role, None),
            "checkBilling": ("GET", "/claims/clm-not-an-id", role, None),
            "documentEncounter": ("PATCH", "/encounters/enc-not-an-id/notes", role, {"notes": ""}),
            "submitClaim": ("POST", "/claims", role, {"encounter_id": "enc-0000-x", "amount_cents": -5}),
            "readKpis": ("GET", "/kpis/financial?window=-1", "patient", None),
        }[journey]
        method, path, who, body = bad
        user = FRONT_DESK if who == "admin" and journey == "registerPatient" else (
            patient if who == "patient" else user)
        await calls.call(method, path, who, user, body=body, patient=patient if "patient" in (body or {}) else None,
                         expect=tuple(code for code in range(400, 500) if code != 429))

    def runner(self, journey: str) -> Callable[[Calls, PersonaPlan, int, int], Awaitable[None]]:
        return getattr(self, journey)
