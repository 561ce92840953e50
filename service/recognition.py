"""Enroll, verify and identify: the operations behind both the REST API and the CLI.

Routes and CLI commands are thin: they parse input, call one method here, and format the result.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from service.calibration import calibrated_far, threshold_for_far
from service.errors import InvalidRequest, NoFace, SubjectNotFound
from service.gallery import Candidate, Gallery, Negative, NewFace, backends
from service.gallery.gallery import WriteObserver
from service.identification import (
    Answer,
    LooksLike,
    SubjectCandidate,
    Vetoed,
    decide,
    veto,
    vote,
)
from service.images import ImageVault
from service.memory import MemoryBudget, decode_bytes
from service.models import Manifest, resolve_model
from service.settings import Settings
from service.vision.batcher import MicroBatcher
from service.vision.chip import chip_jpeg
from service.vision.detection import DetectorOptions, create_detector
from service.vision.embedding import Embedder
from service.vision.image import decode_image
from service.vision.pipeline import Chosen, EnrollPolicy, Face, FacePipeline

log = logging.getLogger(__name__)
#: searches one identify may make when negatives veto its candidates (each twice as wide)
VETO_ROUNDS = 4


@dataclass(frozen=True)
class Threshold:
    """A cosine threshold and where it came from (said in every response that uses one)."""

    value: float
    source: str


@dataclass(frozen=True)
class IdentifiedFace:
    """One face of a probe image, its candidate subjects and the open-set answer
    (``service.identification``)."""

    face: Face
    candidates: list[SubjectCandidate]
    answer: Answer
    vetoed: list[Vetoed] = field(default_factory=list)

    @property
    def match(self) -> SubjectCandidate | None:
        """The subject matched, if the answer is a match."""
        return self.answer.match

    def to_dict(self) -> dict[str, object]:
        """JSON-ready view (what the CLI prints; the API has its own response models)."""

        def candidate(c: SubjectCandidate) -> dict[str, object]:
            return {
                "subject_id": c.subject_id,
                "name": c.name,
                "face_id": c.face_id,
                "score": round(c.score, 6),
                "agreeing": c.agreeing,
            }

        return {
            "detection": self.face.to_dict(),
            "decision": self.answer.decision,
            "match": candidate(self.match) if self.match else None,
            "ambiguous": [candidate(c) for c in self.answer.contenders],
            "candidates": [candidate(c) for c in self.candidates],
            "vetoed": [
                {
                    "subject_id": v.subject_id,
                    "name": v.name,
                    "score": round(v.score, 6),
                    "negative": round(v.negative, 6),
                }
                for v in self.vetoed
            ],
        }


def build_pipeline(settings: Settings, *, batching: bool | None = None) -> FacePipeline:
    """Load detector and recognizer from the registry as the settings say.

    ``batching`` overrides the setting: the server batches concurrent requests, one-shot CLI
    commands do not need the worker thread.
    """
    det_manifest, det_weights = resolve_model(settings.models_dir, settings.detector.model)
    rec_manifest, rec_weights = resolve_model(settings.models_dir, settings.embedder.model)
    options = detector_options(settings)
    detector = create_detector(
        det_manifest,
        det_weights,
        device=settings.device,
        intra_op_threads=settings.intra_op_threads,
        options=options,
    )
    second = None  # the second opinion on doubtful faces (the recognizer's validity rule)
    rule = rec_manifest.validity
    if settings.detector.validity_check and rule is not None:
        if rule.second_detector == det_manifest.name:
            second = detector
        else:
            sec_manifest, sec_weights = resolve_model(settings.models_dir, rule.second_detector)
            second = create_detector(
                sec_manifest,
                sec_weights,
                device=settings.device,
                intra_op_threads=settings.intra_op_threads,
            )
    embedder = Embedder(
        rec_manifest,
        rec_weights,
        device=settings.device,
        intra_op_threads=settings.intra_op_threads,
        max_batch=settings.embedder.max_batch,
        flip_tta=settings.embedder.flip_tta,
    )
    use_batcher = settings.embedder.batching if batching is None else batching
    if use_batcher is None:  # auto: a GPU gains from batches, a small CPU does not
        use_batcher = embedder.providers[0] == "CUDAExecutionProvider"
    batcher = None
    if use_batcher:
        batcher = MicroBatcher(
            embedder.embed_packed,
            max_batch=settings.embedder.batch_max_size,
            max_wait_ms=settings.embedder.batch_max_wait_ms,
            max_queue=settings.embedder.queue_max,
            timeout_s=settings.embedder.queue_timeout_s,
            workers=settings.embedder.batch_workers,
        )
    return FacePipeline(detector, embedder, batcher=batcher, second_detector=second)


def detector_options(settings: Settings) -> DetectorOptions:
    """The detection knobs of these settings (the one place their defaults come from)."""
    d = settings.detector
    return DetectorOptions(
        score_threshold=d.score_threshold,
        nms_iou=d.nms_iou,
        min_face_px=d.min_face_px,
        max_side_px=d.max_side_px,
        upscale_below_px=d.upscale_below_px,
        max_faces=d.max_faces,
    )


def checked_pipeline(settings: Settings) -> FacePipeline:
    """``build_pipeline``, then run once (``self_check``): a device that loads a model but
    cannot run it fails here, and the half-built pipeline is closed."""
    pipe = build_pipeline(settings)
    try:
        pipe.self_check()
    except BaseException:
        pipe.close()
        raise
    return pipe


def open_gallery(
    settings: Settings, manifest: Manifest, *, on_write: WriteObserver | None = None
) -> Gallery:
    """Open (or create) the configured gallery, pinned to this recognizer, with its vault of
    kept face data: it writes chips (privacy.keep_face_chips, on by default) and photos
    (privacy.keep_images, opt-in) as the settings say, and is there even with both off, so that
    what was kept before an option was turned off is still erased with its face."""
    assert manifest.embedding_dim is not None
    images = ImageVault(settings.privacy)
    return backends.open_gallery(
        settings.gallery,
        model_id=manifest.model_id,
        embedding_dim=manifest.embedding_dim,
        images=images,
        on_write=on_write,
        model_sha256=manifest.sha256,
    )


class Recognition:
    """The service's operations over one pipeline and (optionally) one gallery."""

    def __init__(
        self,
        settings: Settings,
        pipeline: FacePipeline,
        gallery: Gallery | None,
        *,
        on_faces: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self._gallery = gallery
        self.on_faces = on_faces
        limits = settings.limits
        self.memory = MemoryBudget(limits.image_memory_bytes, limits.image_memory_wait_s)
        self._warn_of_unsupported_default_fars()

    def _warn_of_unsupported_default_fars(self) -> None:
        """Tell the operator at start-up, not a client later, when a configured default FAR is
        stricter than the recognizer's calibration supports (e.g. calibrated on 200 pairs)."""
        calibration = self.recognizer.calibration
        if calibration is None or not calibration.thresholds_by_far:
            return
        lowest = min(float(k) for k in calibration.thresholds_by_far)
        for purpose, far in (("IDENTIFY", self.settings.identify_far),
                             ("VERIFY", self.settings.verify_far)):  # fmt: skip
            if far is not None and far < lowest * (1 - 1e-9):
                log.warning(
                    "MARGINFACE_%s_FAR=%g is below the lowest FAR %s's calibration supports "
                    "(%g, from %s impostor pairs): requests without far= use far=%g; "
                    "calibrate on more pairs or set MARGINFACE_%s_FAR",
                    purpose, far, self.recognizer.name, lowest, calibration.impostor_pairs,
                    lowest, purpose,
                )  # fmt: skip

    @property
    def gallery(self) -> Gallery:
        """The gallery; only commands that need one open it."""
        if self._gallery is None:
            raise RuntimeError("this Recognition was built without a gallery")
        return self._gallery

    @property
    def recognizer(self) -> Manifest:
        """The recognizer's manifest."""
        return self.pipeline.embedder.manifest

    @contextmanager
    def decoded(self, data: bytes) -> Iterator[np.ndarray]:
        """Decode with the configured pixel limit, inside the memory budget: the image takes
        its decode's share before any pixel is decoded (503 ``overloaded`` when it does not
        come free in time) and keeps its array's share until the block ends."""
        with self.memory.lease() as lease:
            started = time.perf_counter()
            image = decode_image(
                data,
                max_pixels=self.settings.limits.max_image_pixels,
                admit=lambda width, height, _mode: lease.take(decode_bytes(width, height)),
            )
            lease.shrink_to(image.nbytes)
            self.pipeline.timed("decode", started)
            yield image

    def _count(self, faces: int) -> None:
        if self.on_faces is not None:
            self.on_faces(faces)

    def threshold(
        self,
        threshold: float | None = None,
        far: float | None = None,
        *,
        purpose: Literal["verify", "identify"] = "verify",
    ) -> Threshold:
        """The threshold to decide with, and where it came from.

        A caller's threshold wins; else a caller's FAR, looked up in the model's calibration; else
        the configured default FAR for this purpose; else the manifest's recommended threshold.
        """
        if threshold is not None and far is not None:
            raise InvalidRequest("send threshold or far, not both")
        if threshold is not None:
            if not -1.0 <= threshold <= 1.0:
                raise InvalidRequest(f"threshold must be a cosine in [-1, 1], got {threshold}")
            return Threshold(float(threshold), "request")
        calibration = self.recognizer.calibration
        if far is not None:
            value, used = threshold_for_far(calibration, far)
            rests_on = calibration.far_provenance(used) if calibration else ""
            return Threshold(value, f"request far={far:g}: {rests_on}")
        default_far = (
            self.settings.identify_far if purpose == "identify" else self.settings.verify_far
        )
        if default_far is not None and calibration is not None and calibration.thresholds_by_far:
            # a server setting the calibration cannot support is the operator's to fix (warned
            # at start-up), never the client's: use the strictest FAR it does support, and say so
            lowest = min(float(k) for k in calibration.thresholds_by_far)
            usable_far = max(default_far, lowest)
            value, used = threshold_for_far(calibration, usable_far)
            note = (
                f"default {purpose} far={default_far:g}"
                if usable_far == default_far
                else f"default {purpose} far={default_far:g} is below what the calibration "
                f"supports; used far={used:g}"
            )
            return Threshold(value, f"{note}: {calibration.far_provenance(used)}")
        recommended = self.recognizer.thresholds
        if recommended is None:
            raise InvalidRequest(
                f"model {self.recognizer.name} has no recommended threshold; pass threshold="
            )
        return Threshold(recommended.cosine, f"manifest: {recommended.source}")

    def check_top_k(self, top_k: int | None) -> int:
        """The caller's top_k within limits, or the default."""
        k = self.settings.default_top_k if top_k is None else top_k
        if not 1 <= k <= self.settings.limits.max_top_k:
            raise InvalidRequest(f"top_k must be in [1, {self.settings.limits.max_top_k}], got {k}")
        return k

    # ---- detection and embedding

    def detect(self, data: bytes) -> tuple[tuple[int, int], list[Face]]:
        """Decode and find every face, with its quality (non-faces refused: the recognizer
        is run, because validity and quality depend on its response); the image's (height,
        width) and its faces."""
        with self.decoded(data) as image:
            faces = self.pipeline.analyze(image)
            height, width = image.shape[:2]
        self._count(len(faces))
        return (height, width), faces

    def embed(self, data: bytes, *, aligned: bool = False) -> list[Face]:
        """Every face with its embedding (or the whole image as one aligned crop)."""
        with self.decoded(data) as image:
            if aligned:
                return [self.pipeline.embed_aligned(image)]
            faces = self.pipeline.analyze(image)
        self._count(len(faces))
        return faces

    def one_face(
        self,
        data: bytes,
        *,
        policy: EnrollPolicy | None = None,
        aligned: bool = False,
        min_quality: float = 0.0,
    ) -> Chosen:
        """The face to enroll or verify (the pipeline's documented choice) and what the image
        held."""
        return self._choose(data, policy=policy, aligned=aligned, min_quality=min_quality)[0]

    def _choose(
        self,
        data: bytes,
        *,
        policy: EnrollPolicy | None = None,
        aligned: bool = False,
        min_quality: float = 0.0,
        chip: bool = False,
    ) -> tuple[Chosen, bytes | None]:
        """``one_face``, and with ``chip`` the chosen face's chip (cut while the image is
        decoded: an enrollment decodes each photo once)."""
        with self.decoded(data) as image:
            chosen = self.pipeline.choose_face(
                image,
                policy=policy or self.settings.enroll_policy,
                aligned=aligned,
                min_quality=min_quality,
            )
            return chosen, chip_jpeg(image, chosen.face.box) if chip else None

    # ---- gallery operations

    def enroll(
        self,
        subject_id: str,
        images: list[bytes],
        *,
        policy: EnrollPolicy | None = None,
        aligned: bool = False,
        min_quality: float | None = None,
    ) -> list[tuple[int, bool, Chosen]]:
        """Enroll one face per image, all or nothing: any bad image (no face, a face below
        ``min_quality``, default the setting) fails the whole request.

        Returns (face id, created, choice) per image; created is False for an image already
        enrolled for this subject (same sha256).
        """
        self.gallery.check_model(self.pipeline.model_id)
        self.gallery.get_subject(subject_id)
        floor = self.settings.min_quality if min_quality is None else min_quality
        keep_chips = self.settings.privacy.keep_face_chips
        picked = [
            self._choose(data, policy=policy, aligned=aligned, min_quality=floor, chip=keep_chips)
            for data in images
        ]
        chosen = [c for c, _ in picked]
        chips = [chip for _, chip in picked if chip is not None]
        new = [
            NewFace(
                embedding=c.face.embedding,
                box=c.face.box,
                det_score=c.face.score,
                image_sha256=hashlib.sha256(data).hexdigest(),
            )
            for c, data in zip(chosen, images, strict=True)
        ]
        results = self.gallery.add_faces(
            subject_id,
            new,
            model_id=self.pipeline.model_id,
            photos=images,
            chips=chips if keep_chips else None,
        )
        return [(fid, created, c) for (fid, created), c in zip(results, chosen, strict=True)]

    def verify_images(
        self,
        a: bytes,
        b: bytes,
        *,
        threshold: float | None = None,
        far: float | None = None,
        aligned: bool = False,
    ) -> tuple[float, Threshold, Chosen, Chosen]:
        """Cosine similarity of the main faces of two images, and the threshold to judge it by."""
        chosen = self.threshold(threshold, far)
        face_a = self.one_face(a, policy="largest", aligned=aligned)
        face_b = self.one_face(b, policy="largest", aligned=aligned)
        return float(face_a.face.embedding @ face_b.face.embedding), chosen, face_a, face_b

    def verify_subject(
        self,
        a: bytes,
        subject_id: str,
        *,
        threshold: float | None = None,
        far: float | None = None,
        aligned: bool = False,
    ) -> tuple[float, Threshold, Chosen, int | None]:
        """Best cosine similarity between the image's main face and the subject's faces."""
        chosen = self.threshold(threshold, far)
        face_ids, vectors = self.gallery.subject_embeddings(
            subject_id, model_id=self.pipeline.model_id
        )
        face = self.one_face(a, policy="largest", aligned=aligned)
        if len(face_ids) == 0:
            raise NoFace(f"subject {subject_id!r} has no enrolled faces to verify against")
        scores = vectors @ face.face.embedding
        best = int(np.argmax(scores))
        return float(scores[best]), chosen, face, int(face_ids[best])

    def identify(
        self,
        data: bytes,
        *,
        top_k: int | None = None,
        threshold: float | None = None,
        far: float | None = None,
        margin: float | None = None,
        aligned: bool = False,
    ) -> tuple[list[IdentifiedFace], Threshold]:
        """Open-set identification of every face in the image: candidate subjects and a
        match, ambiguous or unknown answer (``service.identification``)."""
        chosen = self.threshold(threshold, far, purpose="identify")
        k = self.check_top_k(top_k)
        gap = self.settings.identify_margin if margin is None else margin
        if not 0.0 <= gap <= 2.0:
            raise InvalidRequest(f"margin must be a cosine difference in [0, 2], got {gap}")
        self.gallery.check_model(self.pipeline.model_id)
        faces = self.embed(data, aligned=aligned)
        if not faces:
            return [], chosen
        ranked = self.rank(np.stack([f.embedding for f in faces]), max(k, 2))
        out = []
        for face, (found, vetoed) in zip(faces, ranked, strict=True):
            subjects = [self._evidence(face.embedding, c, chosen.value) for c in found]
            answer = decide(subjects, chosen.value, gap)
            out.append(IdentifiedFace(face, subjects[:k], answer, vetoed))
        return out, chosen

    def rank(self, probes: np.ndarray, top_k: int) -> list[tuple[list[Candidate], list[Vetoed]]]:
        """For each probe (unit rows of the running model): its top-k candidate subjects once
        the subjects its negatives veto are dropped (``service.identification.veto``), and
        those vetoed. Every identify goes through here (ours, the CLI's, CompreFace's
        recognize by image and by embedding). The negatives of the candidates are read in one
        query; when vetoes leave fewer than ``top_k`` and the gallery has more subjects, the
        search widens (a few rounds at most: only subjects with negatives are ever dropped)."""
        model_id = self.pipeline.model_id
        results: list[tuple[list[Candidate], list[Vetoed]] | None] = [None] * len(probes)
        todo, k = list(range(len(probes))), top_k
        for round_ in range(VETO_ROUNDS):
            started = time.perf_counter()
            ranked = self.gallery.search(probes[todo], top_k=k, model_id=model_id)
            self.pipeline.timed("search", started)
            subjects = sorted({c.subject_id for found in ranked for c in found})
            negatives = self.gallery.negatives_of(subjects, model_id=model_id)
            again = []
            for q, found in zip(todo, ranked, strict=True):
                kept, vetoed = veto(probes[q], found, negatives)
                exhausted = len(found) < k or round_ == VETO_ROUNDS - 1
                if len(kept) >= top_k or exhausted:
                    results[q] = (kept[:top_k], vetoed)
                else:
                    again.append(q)
            todo, k = again, k * 2
            if not todo:
                break
        return [r or ([], []) for r in results]

    def looks_like(
        self, groups: Sequence[tuple[np.ndarray, Collection[str]]]
    ) -> list[LooksLike | None]:
        """For each group of faces (a cluster's sampled members: unit rows of the running
        model, and the subjects the operator said they are not), the gallery subject they look
        like, or None. Each face is decided as an identify without a threshold or far decides
        (the server's identify FAR, margin and negatives: ``rank`` and ``decide``), the refused
        subjects dropped first; the subject most faces are matched to is the suggestion. All
        groups' faces go through one search."""
        if not groups or self._gallery is None:
            return [None] * len(groups)
        try:
            chosen = self.threshold(purpose="identify")
        except InvalidRequest:  # no calibration, no recommended threshold: nothing to suggest
            return [None] * len(groups)
        margin = self.settings.identify_margin
        self.gallery.check_model(self.pipeline.model_id)
        probes = np.concatenate([g for g, _ in groups])
        if not len(probes):
            return [None] * len(groups)
        k = 2 + max(len(refused) for _, refused in groups)
        ranked = iter(self.rank(probes, k))
        calibration = self.recognizer.calibration
        out: list[LooksLike | None] = []
        for faces, refused in groups:
            answers = []
            for _ in range(len(faces)):
                found, _vetoed = next(ranked)
                subjects = [
                    SubjectCandidate(c.subject_id, c.name, c.face_id, c.score, 0)
                    for c in found
                    if c.subject_id not in refused
                ]
                answers.append(decide(subjects, chosen.value, margin))
            best = vote(answers)
            out.append(
                None
                if best is None
                else LooksLike(
                    subject_id=best[0].subject_id,
                    name=best[0].name,
                    similarity=best[0].score,
                    agreeing=best[1],
                    checked=len(faces),
                    far=calibrated_far(calibration, best[0].score),
                    threshold=chosen.value,
                    source=chosen.source,
                )
            )
        return out

    def not_this_person(
        self,
        subject_id: str,
        data: bytes,
        *,
        box: tuple[float, float, float, float] | None = None,
        aligned: bool = False,
    ) -> tuple[Negative, bool, Face]:
        """Remember that a face of an identify photo (sent again) is not ``subject_id``: its
        embedding only is kept, as a negative example (``Gallery.add_negative``). The face
        is the one whose box overlaps ``box`` (the identify answer's ``detection.box``) the
        most, at least half (IoU): NoFace otherwise; without ``box``, the photo's main face
        (verify's choice). Also (negative, created, the face used)."""
        self.gallery.check_model(self.pipeline.model_id)
        self.gallery.get_subject(subject_id)  # 404 before any image work
        if box is None:
            face = self.one_face(data, policy="largest", aligned=aligned).face
        else:
            faces = self.embed(data, aligned=aligned)
            overlaps = [(_iou(f.box, box), i) for i, f in enumerate(faces)]
            best = max(overlaps, default=(0.0, -1))
            if best[0] < 0.5:
                raise NoFace(
                    f"no face of the photo overlaps box {list(box)} by half or more (IoU); "
                    "send the box of the face as identify answered it (detection.box)",
                    faces_found=len(faces),
                )
            face = faces[best[1]]
        negative, created = self.gallery.add_negative(
            subject_id, face.embedding, model_id=self.pipeline.model_id, source="probe"
        )
        return negative, created, face

    def _evidence(self, probe: np.ndarray, c: Candidate, threshold: float) -> SubjectCandidate:
        """A candidate with the number of its faces at or above the threshold (none when its
        best face is below; a subject deleted meanwhile counts its best face only)."""
        agreeing = 0
        if c.score >= threshold:
            try:
                _, vectors = self.gallery.subject_embeddings(
                    c.subject_id, model_id=self.pipeline.model_id
                )
                agreeing = max(1, int((vectors @ probe >= threshold).sum()))
            except SubjectNotFound:
                agreeing = 1
        return SubjectCandidate(c.subject_id, c.name, c.face_id, c.score, agreeing)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, w) * max(0.0, h)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
