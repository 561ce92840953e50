"""Subjects: create, get, list, update, delete."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from service.api import convert
from service.api.deps import CanRead, CanWrite, State
from service.schemas import SubjectCreate, SubjectDeleted, SubjectOut, SubjectPage, SubjectUpdate

router = APIRouter(prefix="/v1/subjects", tags=["subjects"])


@router.post("", status_code=201, dependencies=[CanWrite])
def create_subject(body: SubjectCreate, state: State) -> SubjectOut:
    """Create a subject (a person); faces are added separately."""
    subject_id = body.id if body.id is not None else uuid.uuid4().hex
    return convert.subject(state.gallery.create_subject(subject_id, body.name, body.metadata))


@router.get("", dependencies=[CanRead])
def list_subjects(
    state: State,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,  # SQLite integers are 64-bit
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    search: Annotated[str | None, Query(max_length=128)] = None,
) -> SubjectPage:
    """List subjects, oldest first, optionally filtered by id or name."""
    items, total = state.gallery.list_subjects(offset, limit, search)
    return SubjectPage(
        items=[convert.subject(s) for s in items], total=total, offset=offset, limit=limit
    )


@router.get("/{subject_id}", dependencies=[CanRead])
def get_subject(subject_id: str, state: State) -> SubjectOut:
    """One subject with its face count."""
    return convert.subject(state.gallery.get_subject(subject_id))


@router.patch("/{subject_id}", dependencies=[CanWrite])
def update_subject(subject_id: str, body: SubjectUpdate, state: State) -> SubjectOut:
    """Rename a subject or replace its metadata."""
    return convert.subject(state.gallery.update_subject(subject_id, body.name, body.metadata))


@router.delete("/{subject_id}", dependencies=[CanWrite])
def delete_subject(subject_id: str, state: State) -> SubjectDeleted:
    """Erase a subject and every face of it from the store and the index."""
    removed = state.gallery.delete_subject(subject_id)
    return SubjectDeleted(subject_id=subject_id, faces_deleted=removed)
