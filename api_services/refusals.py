"""Audit of refused attempts (401/403): who tried what, when, and why it was refused.

A refusal is appended to the hash-chained audit log of one shard (chosen by hashing the caller,
so one caller's refusals stay in one chain), as `access.denied` on entity `request` with the
route template as entity id. Refusals are cheap to cause, so their audit is rate-limited (per
caller and overall): what the limit drops is counted (`pim_refused_audit_suppressed_total`) and
the caller's next audited refusal says how many of its refusals went unrecorded before it.
"""

from __future__ import annotations

import logging
import threading

from api_services.audit import Actor, append_audit
from api_services.rate_limit import TokenBuckets
from api_services.sharding import slot_of
from api_services.telemetry import REFUSED_AUDIT_SUPPRESSED, current_context

log = logging.getLogger("pim.audit")
PER_CALLER_RPS, PER_CALLER_BURST = 1.0, 5
OVERALL_RPS, OVERALL_BURST = 20.0, 50


class RefusalAuditor:
    def __init__(self, runtime):
        self.rt = runtime
        self.per_caller = TokenBuckets(PER_CALLER_RPS, PER_CALLER_BURST)
        self.overall = TokenBuckets(OVERALL_RPS, OVERALL_BURST)
        self._lock = threading.Lock()
        self._suppressed: dict[str, int] = {}

    def _admit(self, caller: str) -> int | None:
        """None when over the limit, else how many of this caller's refusals were dropped before."""
        if self.per_caller.take(caller) > 0 or self.overall.take("all") > 0:
            with self._lock:
                if len(self._suppressed) > 10_000:
                    self._suppressed.clear()
                self._suppressed[caller] = self._suppressed.get(caller, 0) + 1
            REFUSED_AUDIT_SUPPRESSED.inc()
            return None
        with self._lock:
            return self._suppressed.pop(caller, 0)

    def record(self, status: int, code: str, message: str, method: str, route: str, client: str) -> None:
        """Append the refusal to the audit log (in a worker thread; never raises)."""
        ctx = current_context()
        known = ctx.user_id not in ("-", "") and status == 403
        user, persona = (ctx.user_id, ctx.persona) if known else ("anonymous", "anonymous")
        caller = user if known else f"anonymous@{client}"
        dropped = self._admit(caller)
        if dropped is None or self.rt.engines is None:
            return
        try:
            smap = self.rt.shard_map
            shard = smap.shard_for_slot(slot_of(caller, smap.slot_count)).name
            after = {"status": status, "reason": code, "message": message, "method": method, "route": route,
                     "client": client, "suppressed_before": dropped}
            actor = Actor(user_id=user, persona=persona, request_id=ctx.request_id, correlation_id=ctx.correlation_id)
            with self.rt.engines.write(shard).begin() as conn:
                append_audit(conn, actor, "access.denied", "request", route[:48], None, after)
        except Exception as exc:  # the refusal stands whatever happens to its audit
            log.warning("refused attempt not audited", extra={"reason": str(getattr(exc, "message", "")) or
                                                              "audit write failed", "route": route})
