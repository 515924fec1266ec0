"""/v1/export: training data in TRL's formats (admin only)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel

from rlhf_persona.api.deps import admin, get_store
from rlhf_persona.api.responses import JSON
from rlhf_persona.api.schemas import ERRORS
from rlhf_persona.feedback.export import export
from rlhf_persona.feedback.store import FeedbackStore

router = APIRouter(tags=["admin"], responses=ERRORS)


class ExportOut(BaseModel):
    format: str
    rows: list[dict[str, Any]]
    report: dict[str, Any]


@router.get("/export/{fmt}", response_model=ExportOut, dependencies=[Depends(admin)])
def export_data(
    fmt: Annotated[Literal["preference", "kto", "ratings"], Path()],
    store: Annotated[FeedbackStore, Depends(get_store)],
) -> JSON:
    """The dataset as JSON rows (same columns as ``rlhf-persona export``) and its report."""
    dataset, report = export(store, fmt)
    return JSON({"format": fmt, "rows": dataset.to_list(), "report": report})
