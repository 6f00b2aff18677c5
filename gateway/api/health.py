"""Liveness (``/health``); readiness of each store lives beside it once the stores exist."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok"]


@router.get("/health", response_model=Health, summary="Liveness: the process is up (no dependencies)")
async def health() -> Health:
    return Health(status="ok")
