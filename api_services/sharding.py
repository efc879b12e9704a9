"""Patient -> hash slot -> shard, from the shard map the operator (or the embedded default) writes.

The map format is shared with the operator's ConfigMap `shard-map.json`; fields are only ever
added as optional. Ids of patient-owned rows embed the slot (`enc-0123-...`), so a request that
names only an encounter or a claim is still routed without a lookup, and a patient's data never
leaves the shard that owns its slot.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import zlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

log = logging.getLogger("pim.sharding")


class Endpoint(BaseModel):
    host: str
    port: int = 1433


class SlotRange(BaseModel):
    start: int = Field(ge=0)
    end: int = Field(ge=0)


class ShardEntry(BaseModel):
    """One shard's entry in the map: its slots, and where and how to reach its store."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str
    ordinal: int
    engine: Literal["sqlserver", "postgres"] = "sqlserver"  # the Shard's spec.engine; a sqlitePath overrides it
    slots: SlotRange
    primary: Endpoint | None = None
    readonly: Endpoint | None = None
    database: str = "pim"
    credentials_secret: str | None = Field(default=None, alias="credentialsSecret")
    sqlite_path: str | None = Field(default=None, alias="sqlitePath")

    @model_validator(mode="after")
    def _has_backend(self) -> "ShardEntry":
        if not self.sqlite_path and not self.primary:
            raise ValueError(f"shard {self.name}: needs either primary or sqlitePath")
        return self

    @property
    def backend(self) -> Literal["sqlite", "sqlserver", "postgres"]:
        """The engine that stores this shard's data, named as the Shard CRD's `spec.engine` names it."""
        return "sqlite" if self.sqlite_path else self.engine


class ShardMap(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    version: int
    slot_count: int = Field(default=1024, alias="slotCount", gt=0)
    shards: list[ShardEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _covers_every_slot_once(self) -> "ShardMap":
        ranges = sorted((s.slots.start, s.slots.end, s.name) for s in self.shards)
        expected = 0
        for start, end, name in ranges:
            if start != expected or end < start:
                raise ValueError(f"slot ranges must tile 0..slotCount-1 without gaps or overlap (at {name})")
            expected = end + 1
        if expected != self.slot_count:
            raise ValueError(f"slot ranges end at {expected - 1}, expected {self.slot_count - 1}")
        return self

    def shard_for_slot(self, slot: int) -> ShardEntry:
        for shard in self.shards:
            if shard.slots.start <= slot <= shard.slots.end:
                return shard
        raise ValueError(f"slot {slot} outside map")  # unreachable after validation

    def by_name(self, name: str) -> ShardEntry:
        for shard in self.shards:
            if shard.name == name:
                return shard
        raise KeyError(name)


def slot_of(patient_id: str, slot_count: int) -> int:
    """The documented hash: crc32 of the UTF-8 patient id, modulo slotCount."""
    return zlib.crc32(patient_id.encode()) % slot_count


_ID_RE = re.compile(r"^(enc|clm)-(\d{4})-[0-9a-f]{32}$")


def slot_in_id(entity_id: str) -> int | None:
    """The slot embedded in an encounter or claim id, or None when the id is malformed."""
    match = _ID_RE.match(entity_id)
    return int(match.group(2)) if match else None


def embedded_map(data_dir: Path, shards: int = 3, slot_count: int = 1024) -> dict:
    """The embedded default's map: SQLite files, slots split as evenly as possible."""
    out = []
    for i in range(shards):
        start = i * slot_count // shards
        end = (i + 1) * slot_count // shards - 1
        out.append({"name": f"shard-{i:02d}", "ordinal": i, "slots": {"start": start, "end": end},
                    "database": "pim", "sqlitePath": str(data_dir / f"shard-{i:02d}.sqlite3")})
    return {"version": 1, "slotCount": slot_count, "shards": out}


def load_map(path: Path) -> ShardMap:
    return ShardMap.model_validate(json.loads(path.read_text()))


def ensure_embedded_map(path: Path, data_dir: Path, shards: int) -> None:
    """Write the embedded default map when none exists (atomically, so readers never see half)."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(embedded_map(data_dir, shards), indent=2) + "\n")
    os.replace(tmp, path)


class ShardMapWatcher:
    """Holds the current map and reloads it when the file changes, without a restart.

    The check is a cheap stat at most once per `interval`; a map that fails validation is
    logged and ignored so a bad ConfigMap edit never takes the service down.
    """

    def __init__(self, path: Path, interval: float = 1.0, on_change=None):
        self.path = path
        self.interval = interval
        self.on_change = on_change
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._checked = time.monotonic()
        self.current = load_map(path)

    def _stat(self):
        try:
            st = os.stat(self.path)
            return (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            return None

    def due(self) -> bool:
        """Whether the next `get` checks the file (and may rebuild engines on a change)."""
        return time.monotonic() - self._checked >= self.interval

    def get(self) -> ShardMap:
        now = time.monotonic()
        if now - self._checked >= self.interval:
            self._checked = now
            self.refresh()
        return self.current

    def refresh(self) -> bool:
        stamp = self._stat()
        if stamp is None or stamp == self._stamp:
            return False
        with self._lock:
            if stamp == self._stamp:
                return False
            try:
                new = load_map(self.path)
            except Exception as exc:  # keep serving the last good map
                log.error("shard map reload rejected", extra={"error": str(exc)[:300]})
                self._stamp = stamp
                return False
            self._stamp = stamp
            if new.version != self.current.version or new != self.current:
                old, self.current = self.current, new
                log.info("shard map reloaded", extra={"old_version": old.version, "new_version": new.version})
                if self.on_change:
                    self.on_change(new)
                return True
        return False
