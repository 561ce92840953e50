"""Face chips through the gallery's one write path: kept by a batch job by default, all or
nothing with their faces, swept at start-up when their face is gone, kept when it is held."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from service.errors import ConfigError, FaceNotFound, InsufficientStorage
from service.gallery import NewFace
from service.images import ImageVault
from service.indexer import BatchIndexer
from service.recognition import open_gallery
from service.vision.chip import chip_jpeg
from service.vision.image import decode_image
from service.vision.pipeline import FacePipeline
from tests.conftest import DATA, kept_files, lfw, make_settings

LFW = DATA / "lfw" / "images"
JPEG = b"\xff\xd8\xff"


def people(root: Path, names: list[str], per_person: int) -> None:
    for name in names:
        (root / name).mkdir(parents=True)
        for photo in sorted((LFW / name).glob("*.jpg"))[:per_person]:
            shutil.copy(photo, root / name / photo.name)


def all_face_ids(gallery) -> list[int]:  # type: ignore[no-untyped-def]
    return [int(f) for f in gallery.face_ids()]


@pytest.mark.parametrize("processes", [0, 1], ids=["threads", "worker-process"])
def test_a_batch_job_keeps_a_chip_per_face_by_default(
    tmp_path: Path, pipeline: FacePipeline, processes: int
) -> None:
    root = tmp_path / "people"
    people(root, ["Colin_Powell", "Tony_Blair"], 2)
    settings = make_settings(tmp_path)
    assert settings.privacy.keep_face_chips and not settings.privacy.keep_images
    gallery = open_gallery(settings, pipeline.embedder.manifest)
    try:
        summary = BatchIndexer(settings, pipeline, gallery, processes=processes).run(root)
        assert summary.counts["enrolled"] == 4
        face_ids = all_face_ids(gallery)
        assert len(face_ids) == 4
        for face_id in face_ids:
            chip = gallery.face_chip(face_id)
            assert chip.startswith(JPEG)
            assert len(pipeline.analyze(decode_image(chip))) >= 1  # a face to re-embed
        kept = sorted(p.name for p in kept_files(tmp_path / "images"))
        assert kept == sorted(f"{f}.chip.img" for f in face_ids)
    finally:
        gallery.close()


def enroll_one(gallery, pipeline: FacePipeline, subject: str, photo: Path) -> int:  # type: ignore[no-untyped-def]
    image = decode_image(photo.read_bytes())
    face = pipeline.analyze(image)[0]
    new = NewFace(embedding=face.embedding, box=face.box, det_score=face.score,
                  image_sha256=photo.name)  # fmt: skip
    ((face_id, created),) = gallery.add_faces(
        subject, [new], model_id=pipeline.model_id, chips=[chip_jpeg(image, face.box)],
        create_name=subject,
    )  # fmt: skip
    assert created
    return int(face_id)


def test_the_start_up_sweep_removes_orphan_chips_and_keeps_those_of_held_faces(
    tmp_path: Path, pipeline: FacePipeline
) -> None:
    settings = make_settings(tmp_path)
    images = tmp_path / "images"
    gallery = open_gallery(settings, pipeline.embedder.manifest)
    held = enroll_one(gallery, pipeline, "powell", lfw("Colin_Powell", 1))
    erased = enroll_one(gallery, pipeline, "blair", lfw("Tony_Blair", 1))
    chip = gallery.face_chip(held)
    gallery.close()
    # what a crash between a face's delete and its chip's leaves, and a half-written chip
    (images / f"{held + 1000}.chip.img").write_bytes(chip)
    (images / f"{held + 1001}.chip.tmp").write_bytes(chip[:100])
    (images / f"{held + 1002}.chip.enc").write_bytes(b"gAAAA-not-ours-any-more")
    (images / "notes.txt").write_text("not a face's: left alone")
    gallery = open_gallery(settings, pipeline.embedder.manifest)
    try:
        assert sorted(p.name for p in kept_files(images)) == sorted(
            [f"{held}.chip.img", f"{erased}.chip.img", "notes.txt"]
        )
        assert gallery.face_chip(held) == chip
        gallery.delete_subject("blair")
        assert not (images / f"{erased}.chip.img").exists()
        with pytest.raises(FaceNotFound):
            gallery.face_chip(erased)
    finally:
        gallery.close()


def test_chips_kept_before_opting_out_are_still_erased_with_their_face(
    tmp_path: Path, pipeline: FacePipeline
) -> None:
    """Turning keep_face_chips off stops keeping new chips; it does not orphan the old ones."""
    images = tmp_path / "images"
    gallery = open_gallery(make_settings(tmp_path), pipeline.embedder.manifest)
    face_id = enroll_one(gallery, pipeline, "powell", lfw("Colin_Powell", 1))
    gallery.close()
    off = make_settings(tmp_path, privacy={"keep_face_chips": False})
    gallery = open_gallery(off, pipeline.embedder.manifest)
    try:
        with pytest.raises(FaceNotFound, match="keep_face_chips is off"):
            gallery.face_chip(face_id)
        later = enroll_one(gallery, pipeline, "blair", lfw("Tony_Blair", 1))
        assert not any(p.name.startswith(f"{later}.") for p in kept_files(images))
        assert (images / f"{face_id}.chip.img").exists()
        gallery.delete_face(face_id)
        assert list(kept_files(images)) == []
    finally:
        gallery.close()


@pytest.mark.parametrize("path", ["add_faces", "add_many"])
def test_a_chip_that_cannot_be_written_undoes_the_enrollment(
    tmp_path: Path, pipeline: FacePipeline, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """A full disk (the one thing faked: ENOSPC from the write) refuses the enrollment with
    InsufficientStorage and leaves neither the faces nor any chip behind."""
    gallery = open_gallery(make_settings(tmp_path), pipeline.embedder.manifest)
    image = decode_image(lfw("Colin_Powell", 1).read_bytes())
    face = pipeline.analyze(image)[0]
    faces = [
        NewFace(embedding=face.embedding, box=face.box, det_score=face.score, image_sha256=s)
        for s in ("a", "b")
    ]
    chip = chip_jpeg(image, face.box)
    real_replace = Path.replace
    writes: list[Path] = []

    def second_write_fails(self: Path, target: Path) -> Path:  # type: ignore[override]
        if self.parent == tmp_path / "images" and self.suffix == ".tmp":
            writes.append(self)
            if len(writes) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", second_write_fails)
    try:
        gallery.create_subject("powell", "Powell", {})
        with pytest.raises(InsufficientStorage, match="face chips"):
            if path == "add_faces":
                gallery.add_faces("powell", faces, model_id=pipeline.model_id, chips=[chip] * 2)
            else:
                gallery.add_many([("powell", f) for f in faces], model_id=pipeline.model_id,
                                 chips=[chip] * 2)  # fmt: skip
        assert len(writes) == 2
        assert gallery.counts() == (1, 0)
        assert list(kept_files(tmp_path / "images")) == []
    finally:
        gallery.close()


def test_the_vault_writes_only_what_the_settings_keep(tmp_path: Path) -> None:
    """Photos stay opt-in even though the vault exists for chips."""
    settings = make_settings(tmp_path).privacy
    vault = ImageVault(settings)
    assert vault.keeps_chips and not vault.keeps_photos
    vault.put_chip(7, b"\xff\xd8\xff chip")
    assert vault.chip(7) == b"\xff\xd8\xff chip"
    with pytest.raises(FaceNotFound):
        vault.get(7)
    vault.delete([7])
    assert list(kept_files(Path(settings.images_dir))) == []


def test_an_images_dir_that_cannot_be_created_is_refused_at_start(tmp_path: Path) -> None:
    """Chips are kept by default: a folder the service cannot write (a read-only root file
    system, a file in the way) is a clear config error when the gallery opens, not a 500 at
    the first enrollment."""
    (tmp_path / "blocked").write_text("a file where the folder would go")
    settings = make_settings(tmp_path, privacy={"images_dir": tmp_path / "blocked" / "images"})
    with pytest.raises(ConfigError, match="KEEP_FACE_CHIPS=false"):
        ImageVault(settings.privacy)
    off = make_settings(
        tmp_path, privacy={"images_dir": tmp_path / "blocked" / "images", "keep_face_chips": False}
    )
    ImageVault(off.privacy)  # keeping nothing: nothing to create


def test_a_second_gallery_is_refused_an_images_folder_another_one_holds(
    tmp_path: Path, pipeline: FacePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chips and photos are named by face id, and every gallery numbers its faces from 1: two
    galleries sharing one images folder would sweep each other's chips away at start and
    overwrite them with other people's faces (a migration would then re-embed the wrong person).
    The folder belongs to the first gallery that opens it; another one is refused, nothing of
    the first's touched. The default folder follows the gallery (an ``images`` folder beside
    it), so two galleries set up by their path alone never meet."""
    shared = {"images_dir": tmp_path / "shared-images"}
    first = make_settings(tmp_path / "a", privacy=shared)
    gallery = open_gallery(first, pipeline.embedder.manifest)
    try:
        image = decode_image(lfw("Colin_Powell", 1).read_bytes())
        face = pipeline.analyze(image)[0]
        new = NewFace(face.embedding, face.box, face.score, "a" * 64)
        gallery.create_subject("powell", "Colin Powell", {})
        [(face_id, _)] = gallery.add_faces(
            "powell", [new], model_id=pipeline.model_id, chips=[chip_jpeg(image, face.box)]
        )
    finally:
        gallery.close()
    before = gallery.face_chip(face_id)
    second = make_settings(tmp_path / "b", privacy=shared)
    with pytest.raises(ConfigError, match="another gallery"):
        open_gallery(second, pipeline.embedder.manifest)
    again = open_gallery(first, pipeline.embedder.manifest)  # its owner still opens it
    try:
        assert again.face_chip(face_id) == before
    finally:
        again.close()
    from service.settings import Settings  # no images_dir: the gallery's own, beside it

    monkeypatch.delenv("MARGINFACE_PRIVACY__IMAGES_DIR")
    plain = Settings(gallery={"path": tmp_path / "d" / "gallery"})  # type: ignore[arg-type]
    assert plain.privacy.images_dir == tmp_path / "d" / "images"
