"""``/v1/admin/model-migration``: move the gallery to another recognizer while the service runs
(service.model_mover): start (or a dry run), follow its progress, roll back, purge."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from pydantic import BaseModel, ConfigDict, Field

from service.api.deps import AppState, IsAdmin, State
from service.errors import UnsupportedByBackend
from service.model_mover import ModelMover

router = APIRouter(prefix="/v1/admin/model-migration", tags=["admin"], dependencies=[IsAdmin])


class MigrationIn(BaseModel):
    """Which model to move to, and how."""

    model_config = ConfigDict(extra="forbid")

    to: str = Field(description="a registered recognizer (GET /v1/models lists them)")
    dry_run: bool = Field(False, description="count what can be re-embedded; change nothing")
    allow_uncalibrated: bool = Field(
        False, description="accept a model without calibrated thresholds"
    )
    switch: bool = Field(True, description="switch when every face is re-embedded")


def _mover(state: AppState) -> ModelMover:
    if state.mover is None:
        raise UnsupportedByBackend("this service cannot move its gallery to another model")
    return state.mover


@router.get("")
def migration_status(state: State) -> dict[str, Any]:
    """Where a migration stands (state, target, progress, faces that could not be re-embedded)
    and where the gallery stands (its model, the previous one, staged embeddings)."""
    return _mover(state).status()


@router.post("", status_code=202)
def start_migration(state: State, body: Annotated[MigrationIn, Body()]) -> dict[str, Any]:
    """Re-embed every face with ``to`` beside the live gallery, then switch in place (requests
    are held for the moment of the switch, never failed). A dry run answers at once."""
    mover = _mover(state)
    if body.dry_run:
        return mover.dry_run(body.to, allow_uncalibrated=body.allow_uncalibrated)
    return mover.start(body.to, allow_uncalibrated=body.allow_uncalibrated, switch=body.switch)


@router.post("/rollback", status_code=202)
def rollback(state: State) -> dict[str, Any]:
    """Move back to the model before the last switch (its embeddings were kept: only faces
    enrolled since are re-embedded)."""
    return _mover(state).start(None, allow_uncalibrated=True)


@router.post("/purge")
def purge(state: State) -> dict[str, Any]:
    """Erase the embeddings of other models kept for a rollback (no rollback afterwards)."""
    return {"purged": state.gallery.models.purge()}
