"""Runtime configuration read from `PIM_*` environment variables (the Deployment contract).

One frozen object, built once per process, so every module reads the same values and the
documented contract in docs/services.md has a single source.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from api_services.catalog import ROUTED


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    shard_map_file: Path
    shard_map_explicit: bool
    credentials_root: Path
    shard_count: int = 3
    dev_issuer_key_file: Path = Path()
    oidc_issuer: str | None = None
    oidc_audience: str = "pim-api"
    oidc_jwks_uri: str | None = None
    persona_claim: str = "persona"
    rate_limit_rps: float = 50.0
    rate_limit_burst: int = 100
    max_body_bytes: int = 64 * 1024
    sqlite_synchronous: str = "FULL"
    group_commit: bool = True
    otlp_endpoint: str | None = None
    log_level: str = "INFO"
    worker_poll_seconds: float = 0.2
    idempotency_ttl_seconds: float = 86_400.0
    shard_acquire_seconds: float = 2.0
    token_max_lifetime_seconds: int = 3600
    claim_max_cents: int = 5_000_000
    db_write_timeout_seconds: float = 5.0
    service_urls: dict[str, str] = field(default_factory=dict)
    faults_file: Path | None = None

    @property
    def dev_issuer(self) -> str:
        return "pim-lab-dev"


def load_settings() -> Settings:
    """Read the environment; paths default to `.lab/data/` of the current directory."""
    data_dir = Path(_env("PIM_DATA_DIR", ".lab/data")).resolve()
    map_env = _env("PIM_SHARD_MAP_FILE")
    return Settings(
        data_dir=data_dir,
        shard_map_file=Path(map_env).resolve() if map_env else data_dir / "shard-map.json",
        shard_map_explicit=map_env is not None,
        credentials_root=Path(_env("PIM_SHARD_CREDENTIALS_DIR", "/etc/pim/shard-credentials")),
        shard_count=int(_env("PIM_EMBEDDED_SHARDS", "3")),
        dev_issuer_key_file=Path(_env("PIM_DEV_ISSUER_KEY_FILE", str(data_dir / "dev-issuer.pem"))),
        oidc_issuer=_env("PIM_OIDC_ISSUER"),
        oidc_audience=_env("PIM_OIDC_AUDIENCE", "pim-api"),
        oidc_jwks_uri=_env("PIM_OIDC_JWKS_URI"),
        persona_claim=_env("PIM_OIDC_PERSONA_CLAIM", "persona"),
        rate_limit_rps=float(_env("PIM_RATE_LIMIT_RPS", "50")),
        rate_limit_burst=int(_env("PIM_RATE_LIMIT_BURST", "100")),
        max_body_bytes=int(_env("PIM_MAX_BODY_BYTES", str(64 * 1024))),
        sqlite_synchronous=_env("PIM_SQLITE_SYNCHRONOUS", "FULL").upper(),
        group_commit=_env("PIM_GROUP_COMMIT", "on").lower() not in ("off", "0", "false", "no"),
        otlp_endpoint=_env("PIM_OTLP_ENDPOINT", _env("OTEL_EXPORTER_OTLP_ENDPOINT")),
        log_level=_env("PIM_LOG_LEVEL", "INFO").upper(),
        worker_poll_seconds=float(_env("PIM_WORKER_POLL_SECONDS", "0.2")),
        idempotency_ttl_seconds=float(_env("PIM_IDEMPOTENCY_TTL_SECONDS", "86400")),
        shard_acquire_seconds=float(_env("PIM_SHARD_ACQUIRE_SECONDS", "2")),
        token_max_lifetime_seconds=int(_env("PIM_TOKEN_MAX_LIFETIME_SECONDS", "3600")),
        claim_max_cents=int(_env("PIM_CLAIM_MAX_CENTS", "5000000")),
        db_write_timeout_seconds=float(_env("PIM_DB_WRITE_TIMEOUT_SECONDS", "5")),
        faults_file=Path(faults) if (faults := _env("PIM_FAULTS_FILE")) else None,
        service_urls={
            name: url.rstrip("/")
            for name in ROUTED
            if (url := _env(f"PIM_{name.upper()}_URL"))
        },
    )
