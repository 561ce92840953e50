"""The console's "looks like <name>" on a group close to a subject of the gallery, named into
that subject in one click, in headless Chromium against a real server (the fixtures of
tests/console/test_console.py)."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import httpx

from tests.conftest import API_KEY, lfw
from tests.console import test_console as console

# the server, the browser and a signed-out page: the fixtures of the console's own tests
base_url, browser, page = console.base_url, console.browser, console.page
expect, shot = console.expect, console.shot
HEADERS = {"X-API-Key": API_KEY}


def test_a_group_that_looks_like_a_subject_is_named_into_it_in_one_click(  # type: ignore[no-untyped-def]
    page, base_url: str, tmp_path: Path
) -> None:
    """Serena Williams enrolled from one photo: the group of three more photos of her says it
    looks like her (with its FAR), Tony Blair's group says nothing, and one click names hers."""
    r = httpx.post(f"{base_url}/v1/subjects", json={"id": "serena", "name": "Serena Williams"},
                   headers=HEADERS)  # fmt: skip
    assert r.status_code == 201, r.text
    photo = lfw("Serena_Williams", 6)
    r = httpx.post(f"{base_url}/v1/subjects/serena/faces", headers=HEADERS, timeout=60,
                   files=[("files", (photo.name, photo.read_bytes(), "image/jpeg"))])  # fmt: skip
    assert r.status_code == 201, r.text
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for person in ("Serena_Williams", "Tony_Blair"):
            for n in (1, 2, 3):
                zf.write(lfw(person, n), f"{person}_{n}.jpg")
    archive = tmp_path / "two.zip"
    archive.write_bytes(buf.getvalue())
    groups = console.find_people(page, archive)
    hers = groups.filter(has=page.locator("img[alt*='Serena_Williams_1']"))
    blair = groups.filter(has=page.locator("img[alt*='Tony_Blair_1']"))
    expect(hers.locator(".looks-like")).to_contain_text("Looks like Serena Williams (serena)")
    expect(hers.locator(".looks-like")).to_contain_text(re.compile(r"FAR 1e-\d"))
    expect(blair.locator(".looks-like")).to_have_count(0)
    shot(page, "console-people-looks-like")
    size = hers.locator(".thumbs > li").count()
    hers.get_by_role("button", name="as Serena Williams").click()
    expect(page.locator("#status")).to_contain_text("as serena:")
    expect(hers.locator(".named", has_text="serena")).to_have_count(1)
    expect(hers.locator(".looks-like")).to_have_count(0)
    faces = httpx.get(f"{base_url}/v1/subjects/serena/faces", headers=HEADERS).json()
    assert len(faces) == 1 + size
    page.get_by_role("button", name="Discard this job").click()
    expect(page.locator("#status")).to_contain_text("Job discarded")
