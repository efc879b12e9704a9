"""Billing service: claims and the financial KPIs the projection maintains."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Request, Response

from api_services.auth import Principal, principal, require
from api_services.domain import claims as dom
from api_services.domain import encounters as enc_dom
from api_services.domain import ids, kpis
from api_services.errors import ERROR_RESPONSES, WRITE_RESPONSES, Forbidden, Invalid, NotFound, Unavailable
from api_services.routers import LINKS, IdempotencyKey, actor, answer_write
from api_services.runtime import runtime
from api_services.telemetry import current_context, tracer
from api_services import transactions
from api_services.transactions import request_hash, run_read

router = APIRouter(tags=["billing"], responses=ERROR_RESPONSES)


@router.post("/claims", status_code=202, response_model=enc_dom.Accepted,
             responses={**WRITE_RESPONSES, 202: LINKS["claim_submitted"]})
def submit_claim(body: dom.SubmitClaim, request: Request, response: Response,
                 who: Principal = Depends(principal), idempotency_key: str | None = IdempotencyKey):
    """Admins submit claims; the claim lives on its encounter's (hence its patient's) shard."""
    require(who, "admin")
    rt = runtime(request)
    shard, slot = rt.route_id(body.encounter_id, "encounter")
    claim_id = ids.slotted_id("clm", slot)

    ceiling = rt.settings.claim_max_cents
    if body.amount_cents > ceiling:
        raise Invalid(f"amount_cents {body.amount_cents} is above the ceiling of {ceiling}", "amount_above_ceiling",
                      errors=[{"field": "body.amount_cents", "code": "amount_above_ceiling",
                               "message": f"at most {ceiling} cents"}])

    with tracer().start_as_current_span("claim.submit"):
        status, out, replayed = transactions.write(
            rt, shard, "claim.submit", lambda conn: dom.submit(conn, actor(who), claim_id, body), status=202,
            user_id=who.user_id, idempotency_key=idempotency_key, req_hash=request_hash("POST", "/claims", body.model_dump()))
    answer_write(response, status, f"/claims/{out['tracking_id']}", replayed)
    return out


@router.get("/claims/{claim_id}", response_model=dom.Claim)
def get_claim(request: Request, claim_id: str = Path(pattern=ids.CLAIM_ID), who: Principal = Depends(principal)):
    require(who, "admin", "patient")
    rt = runtime(request)
    shard, _ = rt.route_id(claim_id, "claim")
    row = run_read(rt.engines.read(shard), shard, lambda conn: dom.snapshot(conn, claim_id))
    if row is None:
        raise NotFound("claim not found", "claim_not_found")
    if who.persona == "patient" and row["patient_id"] != who.user_id:
        raise Forbidden("patients may only read their own records", "not_own_record")
    return row


@router.get("/kpis/financial", response_model=kpis.FinancialKpis)
def financial_kpis(request: Request, who: Principal = Depends(principal)):
    """Read from each shard's read-only replica in the cluster; eventually consistent by design."""
    require(who, "admin", "sre")
    rt = runtime(request)
    current_context().shard = "all"
    shards, unavailable = [], []
    for name in rt.shard_names():
        try:  # an unavailable shard is named, not fatal to the report of the others
            values = run_read(rt.engines.reporting(name), name, kpis.read)
        except Unavailable:
            unavailable.append(name)
            continue
        shards.append(kpis.ShardKpis(shard=name, **values))
    if not shards and unavailable:
        raise Unavailable("no shard is available", "shard_unavailable", headers={"Retry-After": "1"})
    total = kpis.ShardKpis(shard="all", **{k: sum(getattr(s, k) for s in shards) for k in kpis.KPI_NAMES})
    return kpis.FinancialKpis(total=total, shards=shards, unavailable_shards=unavailable)
