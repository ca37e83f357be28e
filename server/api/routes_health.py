"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from saltline.server import workers
from saltline.server.api.deps import Ctx
from saltline.server.api.schemas import HealthResponse
from saltline.server.services.health import check_ready

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    """The process is up."""
    return HealthResponse(status="ok")


@router.get("/readyz", response_model=HealthResponse)
async def readyz(ctx: Ctx) -> HealthResponse:
    """The database is reachable and migrated to this server's head."""
    if ctx.readiness is not None:
        await ctx.readiness.check()
    else:
        await check_ready(ctx.db)
    return HealthResponse(status="ready")


@router.get("/metrics", response_class=Response)
async def metrics(ctx: Ctx) -> Response:
    """Prometheus text format; with ``serve --workers N``, the sum over every worker."""
    registry = workers.metrics_registry() if workers.multiprocess_metrics() else ctx.registry
    return Response(content=generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
