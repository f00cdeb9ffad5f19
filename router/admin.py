"""Admin API: rollout status and manual promote / rollback / pause / resume.

Every route needs the header `X-API-Key` with the router's admin key; a missing or wrong key is
a 401. The routes only translate HTTP into `RolloutController` calls: the digit rollout's, or
with `?model=cheques` the cheque model's own rollout.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from pydantic import BaseModel, Field

from inkwell.errors import ConflictError
from inkwell.web.http import require_key
from router.controller import RolloutController

API_KEY_HEADER = "X-API-Key"


class RollbackRequest(BaseModel):
    reason: str = Field(default="rolled back manually", max_length=2000)


class CanaryWeight(BaseModel):
    weight: float = Field(
        ge=0, le=100, description="Percent of users the canary answers (0-100), e.g. 5, 20, 50."
    )


class CanaryWeightPublic(CanaryWeight):
    previous: float | None = Field(
        default=None, description="The weight before this change (PUT only)."
    )
    source: Literal["admin", "settings", "controller"] = Field(
        description="Who sets it now: the admin API, INKWELL_ROUTER_CANARY_WEIGHT, or the "
        "rollout controller."
    )


def _runtime(request: Request) -> Any:
    return request.app.state.runtime


def admin_actor(
    request: Request,
    x_api_key: Annotated[str | None, Header(alias=API_KEY_HEADER)] = None,
) -> str:
    """The caller's identity for the audit trail, once the admin key checks out."""
    expected = _runtime(request).admin_key
    require_key(
        x_api_key,
        [expected] if expected is not None else [],
        missing=f"the admin API needs the {API_KEY_HEADER} header; the key is "
        "INKWELL_ROUTER_ADMIN_API_KEY, or the file <INKWELL_HOME>/router-admin.key.",
        wrong=f"the {API_KEY_HEADER} header does not match the router's admin key.",
    )
    client = request.client.host if request.client else "unknown"
    return f"admin@{client}"


def controller(request: Request) -> RolloutController:
    found = _runtime(request).controller
    if found is None:
        raise ConflictError(
            "the rollout controller is off in this router (INKWELL_ROUTER_CONTROLLER=false); "
            "the split is the static INKWELL_ROUTER_CANARY_WEIGHT.",
            code="controller_disabled",
        )
    return found


RolloutModel = Literal["digits", "cheques"]


def target(
    request: Request,
    rollout: Annotated[RolloutController, Depends(controller)],
    model: Annotated[
        RolloutModel, Query(description="Which model's rollout: digits (default) or cheques.")
    ] = "digits",
) -> RolloutController:
    """The digit rollout's controller, or with `?model=cheques` the cheque model's own."""
    if model == "digits":
        return rollout
    found: RolloutController | None = _runtime(request).cheque_controller
    if found is None:
        raise ConflictError(
            "the cheque rollout is off in this router; set INKWELL_ROUTER_CHEQUE_ROLLOUT=true "
            "(with the controller and the MLflow registry) or leave out ?model=cheques.",
            code="cheque_rollout_disabled",
        )
    return found


Actor = Annotated[str, Depends(admin_actor)]
Controller = Annotated[RolloutController, Depends(controller)]
# The rollout an action steers: `?model=digits` (default) or `?model=cheques`.
Target = Annotated[RolloutController, Depends(target)]

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/rollout")
async def rollout_status(_: Actor, rollout: Controller, request: Request) -> dict[str, Any]:
    """The rollout's phase, weight, versions and the last analysis (`cheques`: the cheque
    model's own rollout, null while INKWELL_ROUTER_CHEQUE_ROLLOUT is off)."""
    cheques = _runtime(request).cheque_controller
    return {**rollout.status(), "cheques": cheques.status() if cheques is not None else None}


@router.get("/rollout/events")
async def rollout_events(
    _: Actor, rollout: Target, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> list[dict[str, Any]]:
    """Recent transitions, newest first (the audit trail)."""
    events = await asyncio.to_thread(rollout.store.events, rollout.model_name, limit)
    return [asdict(e) for e in events]


@router.post("/rollout/promote")
async def promote(actor: Actor, rollout: Target) -> dict[str, Any]:
    """Promote the canary now (moves the stable alias; services hot-reload)."""
    await rollout.promote(actor)
    return rollout.status()


@router.post("/rollout/rollback")
async def rollback(
    actor: Actor, rollout: Target, body: RollbackRequest | None = None
) -> dict[str, Any]:
    """Stop canary traffic, remove the canary alias and tag the version rolled_back."""
    reason = (body or RollbackRequest()).reason
    await rollout.rollback(f"{reason} ({actor})", actor=actor)
    return rollout.status()


@router.post("/rollout/pause")
async def pause(actor: Actor, rollout: Target) -> dict[str, Any]:
    """Hold the current weight; no automatic decision until resumed."""
    await rollout.pause(actor)
    return rollout.status()


@router.post("/rollout/resume")
async def resume(actor: Actor, rollout: Target) -> dict[str, Any]:
    """Continue the rollout; the current step's interval starts again."""
    await rollout.resume(actor)
    return rollout.status()


def _weight_now(request: Request) -> CanaryWeightPublic:
    runtime = _runtime(request)
    if runtime.controller is not None:
        return CanaryWeightPublic(weight=runtime.split().weight, source="controller")
    source: Literal["admin", "settings"] = "settings" if runtime.manual_weight is None else "admin"
    return CanaryWeightPublic(weight=runtime.static_weight, source=source)


@router.get("/canary/weight")
async def canary_weight(_: Actor, request: Request) -> CanaryWeightPublic:
    """The percent of users the canary answers now, and who sets it."""
    return _weight_now(request)


@router.put("/canary/weight")
async def set_canary_weight(
    actor: Actor, body: CanaryWeight, request: Request
) -> CanaryWeightPublic:
    """Set the canary's share of users when the rollout controller is off (an Argo Rollouts
    step, or an operator): stored for every replica and kept across restarts; 409 while the
    controller runs, since it owns the weight then."""
    previous = await _runtime(request).set_canary_weight(body.weight, actor)
    return _weight_now(request).model_copy(update={"previous": previous})
