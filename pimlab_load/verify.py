"""Reading the ledger back after the load: is every acknowledged write still there?

Each written resource is read once, through the same gateway, with a token of a persona allowed
to read it: a patient or a claim as an admin, an encounter (booking or notes) as a clinician.
A 200 verifies the resource's writes (a notes write only if the encounter is documented at its
version or a later one; an older version means the notes were lost); a 404 saying the resource
does not exist means lost; any other answer is retried `ATTEMPTS` times, then the writes are
unverifiable, never lost. Then `/admin/audit/verify` checks the hash chain of each shard written
to. A stop (SIGTERM) ends the read-back: what is not read yet is unverifiable.
"""

from __future__ import annotations

import asyncio
import json
from typing import Callable

import aiohttp

from pimlab_load.ledger import LOST_SAMPLE, MESSAGE_CHARS, LedgerResult, Write

#: Reads of one resource before its writes count as unverifiable; the backoff doubles.
ATTEMPTS, BACKOFF = 4, 0.25
#: Resources read at once.
CONCURRENCY = 16
#: The audit-chain walk reads every event of every shard: it gets at least this long.
AUDIT_TIMEOUT = 120.0
#: kind -> (read path prefix, role); the user is the ledger's own.
READS = {"patient": ("/patients/", "admin"), "encounter": ("/encounters/", "clinician"),
         "notes": ("/encounters/", "clinician"), "claim": ("/claims/", "admin")}
LEDGER_USER = "load-ledger"
#: The 404 codes that say a resource does not exist (errors.py).
NOT_FOUND = frozenset({"patient_not_found", "encounter_not_found", "claim_not_found"})
#: Who asks for the audit-chain verification (an SRE's right).
AUDITOR = ("sre", LEDGER_USER)

Header = Callable[[str, str], str]


async def _get(session: aiohttp.ClientSession, url: str, authorization: str, stopped: Callable[[], bool],
               method: str = "GET", timeout: float | None = None) -> tuple[int | str, object]:
    """(status, parsed body) after up to ATTEMPTS tries of anything but 200 and 404."""
    status: int | str = "error"
    data = None
    for attempt in range(ATTEMPTS):
        if stopped():
            return "stopped", None
        try:
            extra = {"timeout": aiohttp.ClientTimeout(total=timeout)} if timeout else {}
            async with session.request(method, url, headers={"Authorization": authorization}, **extra) as resp:
                status = resp.status
                raw = await resp.read()
            if status in (200, 404):
                data = json.loads(raw) if raw else None
                return status, data
        except asyncio.TimeoutError:
            status = "timeout"
        except (aiohttp.ClientError, ValueError) as error:
            status = f"error: {type(error).__name__}"
        if attempt + 1 < ATTEMPTS:
            await asyncio.sleep(BACKOFF * 2 ** attempt)
    return status, data


def _judge(write: Write, status: int | str, data: object) -> str:
    """verified, lost or unverifiable: one write against the read of its resource."""
    if status == 404:  # the service says the resource does not exist, not that a route is missing
        return "lost" if isinstance(data, dict) and data.get("code") in NOT_FOUND else "unverifiable"
    if status != 200 or not isinstance(data, dict):
        return "unverifiable"
    if write.kind == "notes":
        documented = data.get("status") == "documented" and int(data.get("version") or 0) >= write.version
        return "verified" if documented else "lost"
    return "verified"


async def read_back(writes: list[Write], url: str, header: Header, timeout: float,
                    stopped: Callable[[], bool] = lambda: False) -> LedgerResult:
    """Every write against a read of its resource, then the audit chain of each shard written to."""
    result = LedgerResult.counted(writes)
    by_resource: dict[str, list[Write]] = {}
    for write in writes:
        prefix, _ = READS[write.kind]
        by_resource.setdefault(prefix + write.id, []).append(write)
    queue = iter(sorted(by_resource.items()))

    async def reader(session: aiohttp.ClientSession) -> None:
        for path, mine in queue:
            role = READS[mine[0].kind][1]
            status, data = await _get(session, url + path, header(role, LEDGER_USER), stopped)
            for write in mine:
                verdict = _judge(write, status, data)
                if verdict == "lost":
                    result.lost += 1
                    result.shards[write.shard][1] += 1
                    if len(result.lost_sample) < LOST_SAMPLE:
                        result.lost_sample.append(write.id)
                elif verdict == "verified":
                    result.verified += 1
                else:
                    result.unverifiable += 1

    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout),
                                     headers={"User-Agent": "pimlab-load"}) as session:
        await asyncio.gather(*(reader(session) for _ in range(CONCURRENCY)))
        if result.shards:
            result.audit = await audit_chains(session, url, header, sorted(result.shards), stopped)
    return result


def _chain_message(report: dict) -> tuple[bool, str]:
    if "error" in report:
        return False, f"shard unavailable: {report['error']}"[:MESSAGE_CHARS]
    problems = report.get("problems") or []
    if report.get("ok") and not problems:
        return True, f"{report.get('events', 0)} events, chain intact"
    named = ", ".join(f"{p.get('problem')} at seq {p.get('seq', p.get('history_id'))}" for p in problems[:3])
    return False, f"{len(problems)} problems in {report.get('events', 0)} events: {named}"[:MESSAGE_CHARS]


async def audit_chains(session: aiohttp.ClientSession, url: str, header: Header, shards: list[str],
                       stopped: Callable[[], bool] = lambda: False) -> dict[str, tuple[bool, str]]:
    """`POST /admin/audit/verify` (an SRE's token): (intact, message) of each of `shards`; a
    verification that cannot be had leaves every shard not ok, saying why."""
    status, data = await _get(session, url + "/admin/audit/verify", header(*AUDITOR), stopped, method="POST",
                              timeout=AUDIT_TIMEOUT)
    if status != 200 or not isinstance(data, dict):
        return {shard: (False, f"audit chain not verified: POST /admin/audit/verify answered {status}")
                for shard in shards}
    reports = data.get("shards") or {}
    return {shard: _chain_message(reports[shard]) if shard in reports else (False, "shard not in the audit report")
            for shard in shards}
