"""The write ledger: every write the services acknowledged, and the write outages the clients saw.

While the load runs, `WriteLedger` keeps one entry per acknowledged write: what was written
(a patient, an encounter booking, an encounter's notes at a version, a claim), its id as the
answer names it, the Idempotency-Key sent, the shard and the wall-clock time. Per shard it
measures write outages as the clients see them: from the send of a write that failed (5xx,
timeout, connection error) to the answer of the next write on that shard, sent after it, that
was acknowledged (an idempotent replay, answered from the key's record, does not show the shard
writes again);
at most `OUTAGES_PER_SHARD` per shard, the longest. After the load `pimlab_load.verify` reads
every entry back into a `LedgerResult`.

The results travel in the engine's termination message (`wire`, `from_wire`, at most
`WIRE_BUDGET` bytes of it), merge across engine pods (`merge`) and become PersonaLoad
`status.ledger`, `status.writeOutages` and `status.slowest` (`status_fields`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

#: Outages kept per shard (the longest).
OUTAGES_PER_SHARD = 5
#: Lost ids named in a result (the rest are counted).
LOST_SAMPLE = 10
#: Bytes of the termination message the ledger may take; the histograms get the rest.
WIRE_BUDGET = 2048
#: An audit-chain message longer than this is cut.
MESSAGE_CHARS = 120


@dataclass(slots=True)
class Write:
    """One acknowledged write. `version`: the encounter version a notes write answered (the
    read-back must find at least it); 1 for a created resource."""

    kind: str  # patient | encounter | notes | claim
    id: str
    key: str | None
    shard: str
    at: float  # wall clock, seconds since the epoch
    version: int = 1


#: What each acknowledged write created or changed, and where its id is in the answer.
#: (method, path prefix, path suffix) -> (kind, answer field holding the id)
WRITES = (
    ("POST", "/patients", "", "patient", "patient_id"),
    ("POST", "/encounters", "", "encounter", "tracking_id"),
    ("PATCH", "/encounters/", "/notes", "notes", "encounter_id"),
    ("POST", "/claims", "", "claim", "tracking_id"),
)


def written(method: str, path: str, answer: object) -> tuple[str, str, int] | None:
    """(kind, id, version) of an acknowledged write, from its route and answer; None for a
    route that writes nothing the ledger knows or an answer without the id."""
    for verb, prefix, suffix, kind, key in WRITES:
        exact = not suffix
        if method == verb and (path == prefix if exact else (path.startswith(prefix) and path.endswith(suffix))):
            if isinstance(answer, dict) and isinstance(answer.get(key), str):
                version = answer.get("version") if kind == "notes" else 1
                return kind, answer[key], int(version) if isinstance(version, int) else 1
            return None
    return None


@dataclass(slots=True)
class Outage:
    """Writes to `shard` failed from `start` (wall clock) until `end` (None: still failing when
    the load ended, `seconds` measured up to then)."""

    shard: str
    start: float
    end: float | None
    seconds: float
    failed: int


def _longest(outages: list[Outage], keep: int = OUTAGES_PER_SHARD) -> list[Outage]:
    return sorted(sorted(outages, key=lambda o: -o.seconds)[:keep], key=lambda o: o.start)


class WriteLedger:
    """The acknowledged writes and the outages of one engine, recorded as answers arrive."""

    def __init__(self):
        self.writes: dict[tuple[str, str, int], Write] = {}
        self._open: dict[str, list] = {}  # shard -> [start, failed writes]
        self._closed: dict[str, list[Outage]] = {}

    def acknowledged(self, kind: str, resource: str, version: int, key: str | None, shard: str, sent: float,
                     answered: float, replayed: bool = False) -> None:
        """A write sent at `sent` was acknowledged at `answered`. It ends the shard's outage (at
        `answered`: when the client saw the shard write again) if it was sent after the
        outage's first failed write (an answer to an earlier send says nothing) and is not an
        idempotent replay (read from the key's record: the shard wrote nothing)."""
        self.writes.setdefault((kind, resource, version), Write(kind, resource, key, shard, sent, version))
        failing = self._open.get(shard)
        if failing is not None and sent > failing[0] and not replayed:
            del self._open[shard]
            closed = self._closed.setdefault(shard, [])
            closed.append(Outage(shard, failing[0], answered, answered - failing[0], failing[1]))
            if len(closed) > OUTAGES_PER_SHARD:
                closed[:] = _longest(closed)

    def failed(self, shard: str, sent: float) -> None:
        """A write sent at `sent` failed (5xx, timeout, connection error) after its retries; one
        sent before the end of the shard's last outage belongs to that outage."""
        failing = self._open.get(shard)
        last = (self._closed.get(shard) or [None])[-1]
        if failing is None and last is not None and last.end is not None and sent < last.end:
            last.failed += 1
        elif failing is None:
            self._open[shard] = [sent, 1]
        else:
            failing[0] = min(failing[0], sent)
            failing[1] += 1

    def outages(self, ended: float) -> list[Outage]:
        """Every shard's outages, the longest `OUTAGES_PER_SHARD`; one still open at `ended`
        (the load's end) has no end and lasts until then."""
        out = []
        for shard in sorted(set(self._closed) | set(self._open)):
            mine = list(self._closed.get(shard, []))
            if shard in self._open:
                start, failed = self._open[shard]
                mine.append(Outage(shard, start, None, max(ended - start, 0.0), failed))
            out += _longest(mine)
        return out


@dataclass
class LedgerResult:
    """The read-back of one engine's ledger (or the sum of several)."""

    acknowledged: int = 0
    verified: int = 0
    lost: int = 0
    unverifiable: int = 0
    lost_sample: list[str] = field(default_factory=list)
    shards: dict[str, list[int]] = field(default_factory=dict)  # shard -> [acknowledged, lost]
    audit: dict[str, tuple[bool, str]] = field(default_factory=dict)  # shard -> (chain ok, message)

    @classmethod
    def counted(cls, writes: list[Write]) -> LedgerResult:
        """The writes counted, per shard too; nothing read back yet."""
        result = cls(acknowledged=len(writes))
        for write in writes:
            result.shards.setdefault(write.shard, [0, 0])[0] += 1
        return result


@dataclass(slots=True)
class Slowest:
    """The request with the highest latency: the trace id sent in its traceparent."""

    trace_id: str
    journey: str
    step: str  # method and route, ids as {id}
    ms: float
    at: float  # wall clock of its intended start


# ------------------------------------------------------------------------------------------
# Merging the pods' results
# ------------------------------------------------------------------------------------------


def merge_results(results: list[LedgerResult]) -> LedgerResult:
    """Counts add up, per shard too; the lost sample is the first pods' ids; a shard's audit
    chain is intact only if every pod found it intact (the first failing pod's message)."""
    out = LedgerResult()
    for result in results:
        out.acknowledged += result.acknowledged
        out.verified += result.verified
        out.lost += result.lost
        out.unverifiable += result.unverifiable
        out.lost_sample += result.lost_sample[:LOST_SAMPLE - len(out.lost_sample)]
        for shard, (acknowledged, lost) in result.shards.items():
            mine = out.shards.setdefault(shard, [0, 0])
            mine[0] += acknowledged
            mine[1] += lost
        for shard, (ok, message) in result.audit.items():
            if shard not in out.audit or (out.audit[shard][0] and not ok):
                out.audit[shard] = (ok, message)
    return out


def merge_outages(outages: list[Outage]) -> list[Outage]:
    """The pods' outages of one shard that overlap are one: from the earliest failed write to
    the latest recovery (the longest any client waited), failed writes summed; then the longest
    `OUTAGES_PER_SHARD` per shard."""
    by_shard: dict[str, list[Outage]] = {}
    for outage in sorted(outages, key=lambda o: (o.shard, o.start)):
        mine = by_shard.setdefault(outage.shard, [])
        last = mine[-1] if mine else None
        if last is not None and outage.start <= last.start + last.seconds:
            until = max(last.start + last.seconds, outage.start + outage.seconds)
            end = None if last.end is None or outage.end is None else max(last.end, outage.end)
            mine[-1] = Outage(last.shard, last.start, end, until - last.start, last.failed + outage.failed)
        else:
            mine.append(Outage(outage.shard, outage.start, outage.end, outage.seconds, outage.failed))
    return [o for shard in sorted(by_shard) for o in _longest(by_shard[shard])]


# ------------------------------------------------------------------------------------------
# The termination message's share: compact lists, epoch seconds
# ------------------------------------------------------------------------------------------


def _size(part: dict) -> int:
    return len(json.dumps(part, separators=(",", ":")).encode())


def wire(result: LedgerResult | None, outages: list[Outage] | None, slowest: Slowest | None,
         budget: int = WIRE_BUDGET) -> dict:
    """The keys the ledger adds to a termination message, within `budget` bytes: first fewer
    outages per shard, then a shorter lost sample, then no audit messages; the counts always."""
    slow = [slowest.trace_id, slowest.journey[:40], slowest.step[:60], round(slowest.ms, 3), round(slowest.at, 3)] \
        if slowest else None
    for outages_kept, sample_kept, messages in ((5, 10, True), (3, 10, True), (1, 10, True), (1, 5, True),
                                                (0, 5, True), (0, 0, True), (0, 0, False)):
        part: dict = {}
        if slow:
            part["slow"] = slow
        if result is not None:
            part["L"] = {"n": [result.acknowledged, result.verified, result.lost, result.unverifiable],
                         "lost": result.lost_sample[:sample_kept], "sh": result.shards,
                         "au": {s: [int(ok), message[:MESSAGE_CHARS] if messages else ""]
                                for s, (ok, message) in result.audit.items()}}
        if outages is not None:
            kept = [o for shard in sorted({o.shard for o in outages})
                    for o in _longest([o for o in outages if o.shard == shard], outages_kept)]
            part["O"] = [[o.shard, round(o.start, 3), None if o.end is None else round(o.end, 3),
                          round(o.seconds, 3), o.failed] for o in kept]
        if _size(part) <= budget:
            return part
    return part  # counts of hundreds of shards: over budget, the histograms give way


def from_wire(data: dict) -> tuple[LedgerResult | None, list[Outage] | None, Slowest | None]:
    """The ledger's keys of a termination message (absent in a report without a ledger).
    Raises KeyError, TypeError or ValueError on a malformed part."""
    result = outages = slowest = None
    if data.get("L") is not None:
        part = data["L"]
        acknowledged, verified, lost, unverifiable = (int(x) for x in part["n"])
        result = LedgerResult(acknowledged, verified, lost, unverifiable, [str(x) for x in part["lost"]][:LOST_SAMPLE],
                              {str(s): [int(a), int(b)] for s, (a, b) in part["sh"].items()},
                              {str(s): (bool(ok), str(message)) for s, (ok, message) in part["au"].items()})
        if min(acknowledged, verified, lost, unverifiable) < 0:
            raise ValueError("negative ledger counts")
    if data.get("O") is not None:
        outages = [Outage(str(s), float(start), None if end is None else float(end), float(seconds), int(failed))
                   for s, start, end, seconds, failed in data["O"]]
    if data.get("slow") is not None:
        trace_id, journey, step, ms, at = data["slow"]
        slowest = Slowest(str(trace_id), str(journey), str(step), float(ms), float(at))
    return result, outages, slowest


# ------------------------------------------------------------------------------------------
# The status fields (camelCase, RFC 3339), for the engine's summary and the PersonaLoad status
# ------------------------------------------------------------------------------------------


def rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def status_fields(result: LedgerResult | None, outages: list[Outage] | None, slowest: Slowest | None) -> dict:
    """`ledger`, `writeOutages` and `slowest` as PersonaLoad status spells them; only those the
    report has."""
    out: dict = {}
    if result is not None:
        out["ledger"] = {
            "acknowledged": result.acknowledged, "verified": result.verified, "lost": result.lost,
            "unverifiable": result.unverifiable, "lostSample": result.lost_sample[:LOST_SAMPLE],
            "shards": [{"shard": s, "acknowledged": a, "lost": lost} for s, (a, lost) in sorted(result.shards.items())],
            "auditChains": [{"shard": s, "ok": ok, "message": message} for s, (ok, message) in sorted(result.audit.items())]}
    if outages is not None:
        out["writeOutages"] = [{"shard": o.shard, "start": rfc3339(o.start), "end": rfc3339(o.end) if o.end else None,
                                "seconds": round(o.seconds, 3), "failedWrites": o.failed} for o in outages]
    if slowest is not None:
        out["slowest"] = {"traceId": slowest.trace_id, "journey": slowest.journey, "step": slowest.step,
                          "ms": round(slowest.ms, 3), "at": rfc3339(slowest.at)}
    return out
