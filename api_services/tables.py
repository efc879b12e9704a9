"""The schema (SQLAlchemy Core): every shard holds the same tables.

Reference data (providers, facilities) is copied to every shard so a patient's requests never need
a second shard. A column a newer schema adds is nullable, so `migrate` can add it to a store an
older schema created.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()
_ts = lambda name: sa.Column(name, sa.String(40), nullable=False)  # noqa: E731 - ISO-8601 UTC text

facilities = sa.Table(
    "facilities", metadata,
    sa.Column("facility_id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(120), nullable=False),
    sa.Column("city", sa.String(80), nullable=False),
)
providers = sa.Table(
    "providers", metadata,
    sa.Column("provider_id", sa.String(40), primary_key=True),
    sa.Column("display_name", sa.String(120), nullable=False),
    sa.Column("specialty", sa.String(80), nullable=False),
    sa.Column("facility_id", sa.String(40), nullable=False),
)
patients = sa.Table(
    "patients", metadata,
    sa.Column("patient_id", sa.String(40), primary_key=True),
    sa.Column("pseudonym", sa.String(120), nullable=False),
    sa.Column("birth_year", sa.Integer, nullable=False),
    sa.Column("sex", sa.String(1), nullable=False),
    sa.Column("mrn", sa.String(40), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    _ts("created_at"),
)
encounters = sa.Table(
    "encounters", metadata,
    sa.Column("encounter_id", sa.String(48), primary_key=True),
    sa.Column("patient_id", sa.String(40), nullable=False, index=True),
    sa.Column("provider_id", sa.String(40), nullable=False),
    sa.Column("facility_id", sa.String(40), nullable=False),
    sa.Column("scheduled_for", sa.String(40), nullable=False),
    sa.Column("reason", sa.String(200), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("notes", sa.Text, nullable=True),
    sa.Column("version", sa.Integer, nullable=False),
    _ts("created_at"),
    _ts("updated_at"),
)
diagnoses = sa.Table(
    "diagnoses", metadata,
    sa.Column("encounter_id", sa.String(48), primary_key=True),
    sa.Column("code", sa.String(10), primary_key=True),
    sa.Column("description", sa.String(200), nullable=False),
)
procedures = sa.Table(
    "procedures", metadata,
    sa.Column("encounter_id", sa.String(48), primary_key=True),
    sa.Column("code", sa.String(10), primary_key=True),
    sa.Column("description", sa.String(200), nullable=False),
)
medications = sa.Table(
    "medications", metadata,
    sa.Column("encounter_id", sa.String(48), primary_key=True),
    sa.Column("name", sa.String(80), primary_key=True),
    sa.Column("dose", sa.String(40), nullable=False),
)
claims = sa.Table(
    "claims", metadata,
    sa.Column("claim_id", sa.String(48), primary_key=True),
    sa.Column("encounter_id", sa.String(48), nullable=False, index=True),
    sa.Column("patient_id", sa.String(40), nullable=False, index=True),
    sa.Column("amount_cents", sa.BigInteger, nullable=False),
    sa.Column("payer", sa.String(80), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    _ts("created_at"),
)
history = sa.Table(
    "history", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("entity", sa.String(20), nullable=False),
    sa.Column("entity_id", sa.String(48), nullable=False, index=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("before", sa.Text, nullable=True),
    sa.Column("after", sa.Text, nullable=False),
    _ts("valid_from"),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("user_id", sa.String(64), nullable=False),
)
audit_events = sa.Table(
    "audit_events", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("event_id", sa.String(36), nullable=False, unique=True),
    _ts("ts"),
    sa.Column("user_id", sa.String(64), nullable=False),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("persona", sa.String(20), nullable=False),
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("entity", sa.String(20), nullable=False),
    sa.Column("entity_id", sa.String(48), nullable=False),
    sa.Column("before", sa.Text, nullable=True),
    sa.Column("after", sa.Text, nullable=True),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    # nullable (`migrate` adds them to older stores); part of the hash when set
    sa.Column("correlation_id", sa.String(64), nullable=True),  # the client's X-Request-Id
    sa.Column("history_id", sa.Integer, nullable=True),  # the history row this event binds
    sa.Column("history_hash", sa.String(64), nullable=True),  # sha256 of that row
)
audit_head = sa.Table(
    "audit_head", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)
outbox = sa.Table(
    "outbox", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(36), nullable=False, unique=True),
    sa.Column("event_type", sa.String(40), nullable=False),
    sa.Column("entity_id", sa.String(48), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    _ts("created_at"),
    sa.Column("claimed_by", sa.String(80), nullable=True),
    sa.Column("claimed_at", sa.Float, nullable=True),
    sa.Column("published_at", sa.String(40), nullable=True, index=True),
)
event_stream = sa.Table(  # the relay's destination: an append-only event log per shard
    "event_stream", metadata,
    sa.Column("position", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(36), nullable=False, unique=True),
    sa.Column("event_type", sa.String(40), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    _ts("published_at"),
)
processed_events = sa.Table(  # the projection's idempotent-consumer ledger
    "processed_events", metadata,
    sa.Column("consumer", sa.String(40), primary_key=True),
    sa.Column("event_id", sa.String(36), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False, index=True),
    _ts("processed_at"),
)
financial_kpis = sa.Table(
    "financial_kpis", metadata,
    sa.Column("kpi", sa.String(40), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)
idempotency_keys = sa.Table(
    "idempotency_keys", metadata,
    sa.Column("user_id", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(128), primary_key=True),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("status_code", sa.Integer, nullable=False),
    sa.Column("response", sa.Text, nullable=False),
    _ts("created_at"),
)


def migrate(engine) -> None:
    """Add the nullable columns newer code knows to tables an older version created."""
    with engine.begin() as conn:
        inspector = sa.inspect(conn)
        for table in metadata.sorted_tables:
            have = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name not in have and column.nullable:
                    kind = column.type.compile(dialect=engine.dialect)
                    conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD {column.name} {kind}")
