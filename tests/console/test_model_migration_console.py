"""The console's Recognizer view (issue 26, item 3): check, move the gallery to another
recognizer, follow it to the switch, roll back, erase the old embeddings; in headless Chromium
against a real server that keeps enrollment photos (what a migration re-embeds from)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.keys import create_key
from tests.conftest import API_KEY, ROOT, lfw
from tests.console import test_console as console
from tests.test_server import free_port, server

# the browser and a signed-out page: the fixtures of the console's own tests (the page goes to
# this module's base_url, below)
browser, page = console.browser, console.page
expect, shot, sign_in = console.expect, console.shot, console.sign_in
HEADERS = {"X-API-Key": API_KEY}
PEOPLE = ["Colin_Powell", "Tony_Blair", "Donald_Rumsfeld"]
TARGET = "sface-2021dec-int8"


@pytest.fixture(autouse=True)
def _needs_int8(int8_recognizer: str) -> None:
    """The migration target: derived on a fresh checkout (tests.conftest.int8_recognizer)."""


UNCALIBRATED = "sface-2021dec-uncalibrated"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kept") / "images"


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys") / "keys.json"


@pytest.fixture(scope="module")
def writer(keys_file: Path) -> str:
    """A key that may enroll but not administer (made before the server starts: it re-reads
    its keys file at most once a second)."""
    return create_key(keys_file, "writer", ["write"])


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, int8_recognizer: str) -> Path:
    """The repository's models (the int8 target derived first), and SFace registered once
    more without its calibration."""
    folder = tmp_path_factory.mktemp("models")
    for model in (ROOT / "models").iterdir():
        (folder / model.name).symlink_to(model)
    bare = folder / UNCALIBRATED
    bare.mkdir()
    manifest = json.loads((ROOT / "models/sface-2021dec/manifest.json").read_text())
    manifest.update(name=UNCALIBRATED, thresholds=None)
    (bare / "manifest.json").write_text(json.dumps(manifest))
    (bare / manifest["file"]).symlink_to(ROOT / "models/sface-2021dec" / manifest["file"])
    return folder


@pytest.fixture(scope="module")
def base_url(
    tmp_path_factory: pytest.TempPathFactory,
    images: Path,
    keys_file: Path,
    models: Path,
    writer: str,
) -> Iterator[str]:
    """A real server that keeps each enrolled photo, so a migration has something to
    re-embed from (the console's other tests run on the default: embeddings only)."""
    port = free_port()
    root = tmp_path_factory.mktemp("console-migration")
    env = {
        "MARGINFACE_PRIVACY__KEEP_IMAGES": "true",
        "MARGINFACE_PRIVACY__IMAGES_DIR": str(images),
        "MARGINFACE_JOBS__WORK_DIR": str(root / "jobs"),
        "MARGINFACE_AUTH__KEYS_FILE": str(keys_file),
    }
    with server(root / "gallery", port, env, models_dir=models):
        yield f"http://127.0.0.1:{port}"


def enroll(base_url: str, person: str) -> list[int]:
    """``person`` with two LFW photos (the third is held back for identify); the face ids."""
    r = httpx.post(f"{base_url}/v1/subjects", json={"id": person, "name": person}, headers=HEADERS)
    assert r.status_code == 201, r.text
    files = [("files", (f"{n}.jpg", lfw(person, n).read_bytes(), "image/jpeg")) for n in (1, 2)]
    url = f"{base_url}/v1/subjects/{person}/faces"
    r = httpx.post(url, headers=HEADERS, files=files, timeout=60)
    assert r.status_code == 201, r.text
    return [f["face_id"] for f in r.json()["faces"]]


def identify(base_url: str, person: str) -> tuple[str, str | None]:
    """(the answering model's id, whom a held-back photo of ``person`` matches)."""
    photo = lfw(person, 3)
    r = httpx.post(f"{base_url}/v1/identify", headers=HEADERS, timeout=60,
                   files={"image": (photo.name, photo.read_bytes(), "image/jpeg")})  # fmt: skip
    assert r.status_code == 200, r.text
    match = r.json()["faces"][0]["match"]
    return r.json()["model_id"], match["subject_id"] if match else None


def test_move_the_gallery_to_another_recognizer_and_back(  # type: ignore[no-untyped-def]
    page, base_url: str, images: Path
) -> None:
    faces = {person: enroll(base_url, person) for person in PEOPLE}
    old_model, _ = identify(base_url, "Colin_Powell")
    # one face whose kept photo and chip are gone: it cannot be re-embedded, and the view says so
    lost = faces["Tony_Blair"][1]
    (images / f"{lost}.img").unlink()
    (images / f"{lost}.chip.img").unlink()  # its face chip too (kept by default)

    sign_in(page)
    page.wait_for_selector("#view-gallery:not([hidden])")
    page.get_by_role("link", name="Recognizer").click()
    expect(page.locator("#rec-gallery-model")).to_contain_text(f"sface-2021dec ({old_model})")
    expect(page.locator("#rec-service-model")).to_contain_text(old_model)
    expect(page.locator("#rec-previous-model")).to_contain_text("never switched")
    expect(page.locator("#migration")).to_be_hidden()
    expect(page.get_by_role("button", name="Roll back")).to_be_disabled()
    expect(page.get_by_role("button", name="Erase old embeddings")).to_be_disabled()
    # the gallery's own model is marked, and the choice starts on another one
    picker = page.get_by_label("Move to")
    expect(picker.locator("option", has_text="(current")).to_have_text("sface-2021dec (current)")
    assert picker.input_value() != "sface-2021dec"

    picker.select_option(TARGET)
    page.get_by_role("button", name="Check").click()
    expect(page.locator("#migrate-check")).to_contain_text(
        f"Check for {TARGET}: 6 of 6 faces to re-embed — 0 from their face chip, 5 from their "
        "photo, 1 cannot be (nothing kept)"
    )
    assert identify(base_url, "Colin_Powell")[0] == old_model  # a check changes nothing

    page.get_by_role("button", name="Move gallery").click()
    state = page.locator("#migration-state")
    expect(state).to_contain_text(re.compile(rf"^Switched — to {TARGET} \("), timeout=120_000)
    expect(page.locator("#migration-count")).to_have_text("6/6 faces")
    assert page.get_by_label("Faces re-embedded").get_attribute("value") == "6"
    expect(page.locator("#rec-gallery-model")).to_contain_text(f"{TARGET} ({TARGET}@")
    expect(page.locator("#rec-service-model")).to_contain_text(f"{TARGET}@")
    expect(page.locator("#rec-previous-model")).to_contain_text(
        f"{old_model}): its embeddings are kept"
    )
    expect(page.locator("#migration-result")).to_contain_text("5 re-embedded now, 1 could not be")
    failures = page.locator("#migration-failures li")
    expect(failures).to_have_count(1)
    expect(failures).to_contain_text(f"Face {lost} of Tony_Blair: nothing kept")
    expect(page.get_by_role("button", name="Roll back")).to_be_enabled()
    expect(page.get_by_role("status")).to_have_text(re.compile(rf"^Switched — to {TARGET} \("))
    assert picker.input_value() != TARGET  # not offered to move where it is
    shot(page, "console-recognizer-switched")
    page.set_viewport_size({"width": 375, "height": 740})  # a phone: long model ids wrap
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"the page is {width}px wide at a phone's 375px"
    shot(page, "console-recognizer-phone")
    page.set_viewport_size({"width": 1200, "height": 900})

    # identify answers with the new model, and still knows everyone
    for person in PEOPLE:
        model, who = identify(base_url, person)
        assert model.startswith(f"{TARGET}@") and who == person, (model, who)

    page.get_by_role("button", name="Roll back").click()
    expect(state).to_contain_text(re.compile(r"^Switched — to sface-2021dec \("), timeout=120_000)
    expect(page.locator("#rec-gallery-model")).to_contain_text(f"sface-2021dec ({old_model})")
    expect(page.locator("#rec-service-model")).to_contain_text(old_model)
    expect(page.locator("#rec-staged")).to_contain_text(f"of {TARGET} ({TARGET}@")
    assert identify(base_url, "Colin_Powell") == (old_model, "Colin_Powell")

    # erasing the kept embeddings (the page fixture accepts the confirmation)
    page.get_by_role("button", name="Erase old embeddings").click()
    expect(page.locator("#status")).to_contain_text(re.compile(r"Erased \d+ old embeddings"))
    expect(page.locator("#rec-staged")).to_have_text("none")
    expect(page.get_by_role("button", name="Erase old embeddings")).to_be_disabled()
    status = httpx.get(f"{base_url}/v1/admin/model-migration", headers=HEADERS).json()
    assert status["staged_models"] == {} and status["gallery_model"] == old_model


def test_a_key_without_the_admin_scope_is_told_why(  # type: ignore[no-untyped-def]
    page, writer: str
) -> None:
    sign_in(page, writer)
    page.wait_for_selector("#view-gallery:not([hidden])")
    page.get_by_role("link", name="Recognizer").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("it needs the 'admin' scope")
    expect(page.locator("#rec-gallery-model")).to_have_text("")


def test_an_uncalibrated_model_needs_the_explicit_tick(  # type: ignore[no-untyped-def]
    page, base_url: str
) -> None:
    sign_in(page)
    page.wait_for_selector("#view-gallery:not([hidden])")
    page.get_by_role("link", name="Recognizer").click()
    picker = page.get_by_label("Move to")
    expect(picker.locator(f"option[value='{UNCALIBRATED}']")).to_have_text(
        f"{UNCALIBRATED} (uncalibrated)"
    )
    expect(picker.locator(f"option[value='{TARGET}']")).to_have_text(TARGET)
    picker.select_option(UNCALIBRATED)
    expect(page.locator("#migrate-uncalibrated")).to_be_visible()
    page.get_by_role("button", name="Move gallery").click()
    expect(page.get_by_role("alert")).to_contain_text(
        f'{UNCALIBRATED} has no calibrated thresholds: tick "Allow uncalibrated"'
    )
    status = httpx.get(f"{base_url}/v1/admin/model-migration", headers=HEADERS).json()
    assert status["state"] in ("idle", "switched") and status.get("to") != UNCALIBRATED
    page.get_by_label("Allow uncalibrated").check()
    page.get_by_role("button", name="Check").click()
    expect(page.locator("#migrate-check")).to_contain_text(f"Check for {UNCALIBRATED}: ")
    expect(page.get_by_role("alert")).to_be_hidden()
