"""Cluster jobs: group a zip or a server-side folder of photos into people, review the
clusters (merge two, remove a face), and name one into the gallery."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import FileResponse, Response

from service.api.deps import IsAdmin, State
from service.api.jobs import job_source
from service.calibration import threshold_for_far
from service.clustering import DEFAULT_FAR
from service.clustering.work import ClusterWork
from service.schemas import (
    ClusterOut,
    ClustersOut,
    JobOut,
    MergeClustersIn,
    NameClusterIn,
    NamedClusterOut,
    NotSubjectIn,
    NotSubjectOut,
)

router = APIRouter(prefix="/v1/jobs", tags=["clusters"], dependencies=[IsAdmin])


def review(state: State, job_id: str) -> ClusterWork:
    """The reviewable clusters of a finished cluster job, their names following this
    service's gallery. JobNotFound, JobNotFinished."""
    work = state.jobs.get(job_id).clusters()
    work.gallery = state.gallery
    return work


@router.post("/cluster", status_code=202)
def submit_cluster_job(
    state: State,
    archive: Annotated[UploadFile | None, File(description="zip of photos, any layout")] = None,
    path: Annotated[str | None, Form(description="a folder under an allowed root")] = None,
    far: Annotated[
        float | None,
        Form(
            description="how often two strangers may be linked (calibrated); default: 0.1 / "
            "the number of faces"
        ),
    ] = DEFAULT_FAR,
) -> JobOut:
    """Group every face of the photos into people; answers at once with a job to poll."""
    if far is not None:  # refused now (422), not when the job runs
        threshold_for_far(state.recognition.recognizer.calibration, far)
    source, tree, folder = job_source(state, archive, path, "cluster")
    try:
        if folder is None and state.jobs.folders is not None:
            folder = state.jobs.folders.create("cluster")  # the thumbnails of a path job
    except BaseException:
        tree.close()
        raise
    job = state.jobs.submit(source, tree, folder, kind="cluster", far=far)
    return JobOut(**job.to_dict())


@router.get("/{job_id}/clusters")
def get_clusters(job_id: str, state: State) -> ClustersOut:
    """The clusters of a finished cluster job (409 job_not_finished before); each one not
    yet named says which gallery subject it looks like (``looks_like``, or null)."""
    return ClustersOut(**review(state, job_id).view(state.recognition.looks_like))


@router.get("/{job_id}/faces/{face}.jpg", response_class=FileResponse)
def get_face_thumbnail(job_id: str, face: int, state: State) -> FileResponse:
    """One face's aligned crop, while the job lives."""
    path = review(state, job_id).thumbnail(face)
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


@router.get("/{job_id}/clusters/{cluster}")
def get_cluster(job_id: str, cluster: int, state: State) -> ClusterOut:
    """One cluster of a finished cluster job."""
    return ClusterOut(**review(state, job_id).cluster(cluster, state.recognition.looks_like))


@router.post("/{job_id}/clusters/merge")
def merge_clusters(job_id: str, body: MergeClustersIn, state: State) -> ClusterOut:
    """The second cluster's faces join the first; the second is retired."""
    work = review(state, job_id)
    return ClusterOut(**work.merge(body.into, body.other, state.recognition.looks_like))


@router.delete("/{job_id}/clusters/{cluster}/faces/{face}", response_model=None)
def remove_face(job_id: str, cluster: int, face: int, state: State) -> ClusterOut | Response:
    """Take a wrong face out of a cluster before naming it (204 when the cluster is then
    empty)."""
    view = review(state, job_id).remove(cluster, face, state.recognition.looks_like)
    return Response(status_code=204) if view is None else ClusterOut(**view)


@router.post("/{job_id}/clusters/{cluster}/faces/{face}/not-subject")
def not_this_person(
    job_id: str, cluster: int, face: int, body: NotSubjectIn, state: State
) -> NotSubjectOut:
    """Not this person: a member of a named cluster is not its subject (or ``subject_id``).
    Its embedding is kept as a negative example of the subject (identify stops naming the
    subject for faces like it), it leaves the cluster, the face a naming enrolled from it is
    erased from the subject, and naming never puts it there again."""
    work = review(state, job_id)
    done = work.not_this_person(
        cluster, face, body.subject_id, state.gallery, state.recognition.pipeline.model_id
    )
    return NotSubjectOut(**done)


@router.post("/{job_id}/clusters/{cluster}/subject")
def name_cluster(job_id: str, cluster: int, body: NameClusterIn, state: State) -> NamedClusterOut:
    """Enroll the cluster's faces as a subject (created if new, else extended); the job's
    embeddings are used, nothing is detected again. Named again as another subject: the faces
    move there (never in two subjects)."""
    work = review(state, job_id)
    named = work.name(
        cluster,
        body.subject_id,
        body.name,
        state.gallery,
        state.recognition.pipeline.model_id,
    )
    return NamedClusterOut(**named)


@router.post("/{job_id}/faces/{face}/subject")
def name_face(job_id: str, face: int, body: NameClusterIn, state: State) -> NamedClusterOut:
    """Name a face left alone: it becomes a cluster of its own (a new number), named as a
    cluster is."""
    work = review(state, job_id)
    named = work.name_face(
        face,
        body.subject_id,
        body.name,
        state.gallery,
        state.recognition.pipeline.model_id,
    )
    return NamedClusterOut(**named)
