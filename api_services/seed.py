"""Deterministic synthetic seed data: the same seed gives the same patients, encounters and claims.

Names are assembled from syllables and MRNs are `SYN-...`: nothing here is, or resembles, PHI.
Seeding goes through the same domain functions as the API, so seed rows are audited too.
"""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta, timezone

from api_services.audit import Actor, record_write
from api_services.domain import claims, encounters, ids, patients, reference
from api_services.engines import Engines
from api_services.sharding import ShardMap, slot_of
from api_services.tables import facilities, providers

SYLLABLES = ["ka", "lo", "mi", "ra", "ten", "vo", "zu", "bel", "dor", "fen", "gar", "hil", "jun", "nas", "pek"]
CITIES = ["Northvale", "Eastmoor", "Southbay", "Westfield", "Midtown"]
SPECIALTIES = ["family medicine", "cardiology", "pediatrics", "orthopedics", "dermatology"]
REASONS = ["annual check-up", "follow-up visit", "persistent cough", "knee pain", "skin rash", "vaccination"]
ICD10 = [("J06.9", "Acute upper respiratory infection"), ("M25.561", "Pain in right knee"),
         ("L30.9", "Dermatitis, unspecified"), ("Z00.00", "General adult medical examination")]
CPT = [("99213", "Office visit, established patient"), ("90471", "Immunization administration"),
       ("73560", "X-ray of knee")]
MEDS = [("Amoxicillin", "500 mg"), ("Ibuprofen", "400 mg"), ("Hydrocortisone cream", "1 percent")]
PAYERS = ["Synthetic Health Plan", "Lab Mutual", "Demo Care"]
BASE = datetime(2024, 1, 1, tzinfo=timezone.utc)
#: The named system actor seed rows are attributed to (each run gets its own request id).
SEED_ACTOR = "system:seed"


def seed_actor(seed_value: int) -> Actor:
    """The seed run's actor: a real, unique request id per run; the seed value as correlation id."""
    return Actor(user_id=SEED_ACTOR, persona="system", request_id=uuid.uuid4().hex,
                 correlation_id=f"pimlab-seed-{seed_value}")


def _name(rng: random.Random) -> str:
    part = lambda: "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()  # noqa: E731
    return f"{part()} {part()}"


def seeded_patient_id(seed_value: int, index: int) -> str:
    """The id `seed` gives patient number `index`, so load tools can address seeded patients."""
    return ids.new_patient_id("seed", f"{seed_value}:patient:{index}")


def seed(engines: Engines, shard_map: ShardMap, seed_value: int = 42, n_patients: int = 200) -> dict:
    rng = random.Random(seed_value)
    SEEDER = seed_actor(seed_value)  # noqa: N806 - one actor for the whole run
    facs = [{"facility_id": f"fac-{i:03d}", "name": f"{CITIES[i % len(CITIES)]} Clinic {i}",
             "city": CITIES[i % len(CITIES)]} for i in range(1, 6)]
    provs = [{"provider_id": f"prv-{i:04d}", "display_name": f"Dr. {_name(rng)}",
              "specialty": rng.choice(SPECIALTIES), "facility_id": facs[i % len(facs)]["facility_id"]}
             for i in range(1, 21)]
    counts = {"facilities": 0, "providers": 0, "patients": 0, "encounters": 0, "claims": 0}
    for shard in shard_map.shards:  # reference data on every shard
        with engines.write(shard.name).begin() as conn:
            for row in facs:
                if not reference.facility_exists(conn, row["facility_id"]):
                    conn.execute(facilities.insert().values(**row))
                    record_write(conn, SEEDER, action="facility.create", entity="facility",
                                 entity_id=row["facility_id"], version=1, before=None, after=row,
                                 event_type="facility.registered")
                    counts["facilities"] += 1
            for row in provs:
                if not reference.provider_exists(conn, row["provider_id"]):
                    conn.execute(providers.insert().values(**row))
                    record_write(conn, SEEDER, action="provider.create", entity="provider",
                                 entity_id=row["provider_id"], version=1, before=None, after=row,
                                 event_type="provider.registered")
                    counts["providers"] += 1
    for i in range(n_patients):
        patient_id = seeded_patient_id(seed_value, i)
        data = patients.PatientCreate(pseudonym=_name(rng), birth_year=rng.randint(1940, 2020),
                                      sex=rng.choice(["F", "M", "X"]))
        plan = [(rng.choice(provs), rng.choice(REASONS), rng.randint(0, 365), rng.random() < 0.6,
                 rng.randint(5_000, 250_000), rng.choice(PAYERS), rng.choice(ICD10), rng.choice(CPT), rng.choice(MEDS))
                for _ in range(rng.randint(0, 3))]
        slot = slot_of(patient_id, shard_map.slot_count)
        shard = shard_map.shard_for_slot(slot).name
        with engines.write(shard).begin() as conn:
            if patients.snapshot(conn, patient_id) is not None:
                continue
            patients.create(conn, SEEDER, patient_id, data, mrn=f"SYN-{seed_value}-{i:06d}")
            counts["patients"] += 1
            for j, (prov, reason, day, documented, amount, payer, dx, px, med) in enumerate(plan):
                enc_id = ids.slotted_id("enc", slot, f"{patient_id}:{j}")
                book = encounters.BookEncounter(patient_id=patient_id, provider_id=prov["provider_id"],
                                                facility_id=prov["facility_id"], reason=reason,
                                                scheduled_for=BASE + timedelta(days=day, hours=9))
                encounters.book(conn, SEEDER, enc_id, book)
                counts["encounters"] += 1
                if documented:
                    notes = encounters.EncounterNotes(
                        notes=f"Seen for {reason}. Plan discussed.",
                        diagnoses=[encounters.Diagnosis(code=dx[0], description=dx[1])],
                        procedures=[encounters.Procedure(code=px[0], description=px[1])],
                        medications=[encounters.Medication(name=med[0], dose=med[1])])
                    encounters.document(conn, SEEDER, encounters.snapshot(conn, enc_id), notes)
                    claim = claims.SubmitClaim(encounter_id=enc_id, amount_cents=amount, payer=payer)
                    claims.submit(conn, SEEDER, ids.slotted_id("clm", slot, f"{enc_id}:claim"), claim)
                    counts["claims"] += 1
    return counts
