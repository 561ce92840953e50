"""The console's "Not this person", on an identify candidate and on a member of a named group,
in headless Chromium against a real server (the fixtures of tests/console/test_console.py)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import httpx

from tests.conftest import API_KEY, lfw
from tests.console import test_console as console

# the server, the browser and a signed-out page: the fixtures of the console's own tests
base_url, browser, page = console.base_url, console.browser, console.page
expect, shot, sign_in = console.expect, console.shot, console.sign_in
HEADERS = {"X-API-Key": API_KEY}


def enroll(base_url: str, sid: str, name: str, path: Path) -> None:
    r = httpx.post(f"{base_url}/v1/subjects", json={"id": sid, "name": name}, headers=HEADERS)
    assert r.status_code == 201, r.text
    r = httpx.post(f"{base_url}/v1/subjects/{sid}/faces", headers=HEADERS, timeout=60,
                   files=[("files", (path.name, path.read_bytes(), "image/jpeg"))])  # fmt: skip
    assert r.status_code == 201, r.text


def test_not_this_person_on_an_identify_candidate(  # type: ignore[no-untyped-def]
    page, base_url: str
) -> None:
    """Jan Bjoerklund, enrolled nowhere, is taken for Colin Prescot at FAR 1e-2; "Not this
    person" on Prescot's row makes the same photo answer the next man, Powell, and says why
    Prescot is not named."""
    enroll(base_url, "prescot", "Colin Prescot", lfw("Colin_Prescot", 1))
    enroll(base_url, "powell", "Colin Powell", lfw("Colin_Powell", 1))
    sign_in(page)
    page.wait_for_selector("#view-gallery:not([hidden])")
    page.get_by_role("link", name="Identify").click()
    page.select_option("#identify-far", "0.01")
    page.set_input_files("#identify-file", str(lfw("Jan_Bjoerklund", 1)))
    page.get_by_role("button", name="Identify", exact=True).click()
    box = page.locator(".face-box.match")
    expect(box).to_have_count(1, timeout=60_000)
    expect(box).to_contain_text("Colin Prescot")
    box.click()
    first = page.locator("#candidate-list li").first
    expect(first).to_contain_text("Colin Prescot")
    first.get_by_role("button", name="Not Colin Prescot").click()
    expect(page.locator("#status")).to_contain_text("Remembered: face 1 is not Colin Prescot")
    expect(page.locator(".face-box.match")).to_contain_text("Colin Powell")
    expect(page.locator("#candidate-vetoed")).to_contain_text("Colin Prescot")
    expect(page.locator("#candidate-list")).not_to_contain_text("Colin Prescot")
    shot(page, "console-not-this-person")
    listed = httpx.get(f"{base_url}/v1/subjects/prescot/negatives", headers=HEADERS).json()
    assert [n["source"] for n in listed["negatives"]] == ["probe"]

    # the subject's page lists it; forgetting it lets Prescot be named again
    page.get_by_role("link", name="Gallery").click()
    page.locator("tr[data-subject='prescot']").get_by_role("button", name="Open").click()
    expect(page.locator("#negatives li")).to_have_count(1)
    expect(page.locator("#negatives")).to_contain_text("an identify photo")
    page.locator("#negatives li").get_by_role("button", name="Forget").click()
    expect(page.locator("#status")).to_contain_text("Forgot that an identify photo is not prescot")
    expect(page.locator("#negatives li")).to_have_count(0)
    page.get_by_role("link", name="Identify").click()
    page.get_by_role("button", name="Identify", exact=True).click()
    expect(page.locator(".face-box.match")).to_contain_text("Colin Prescot", timeout=60_000)


def test_not_this_person_on_a_member_of_a_named_group(  # type: ignore[no-untyped-def]
    page, base_url: str, tmp_path: Path
) -> None:
    """Two men's groups merged and named as one: "Not one" on a face of the other man takes
    it out of the group and out of the subject, and keeps it as the subject's negative."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for person in ("Colin_Powell", "Tony_Blair"):
            for n in (1, 2, 3):
                zf.write(lfw(person, n), f"{person}_{n}.jpg")
    archive = tmp_path / "two.zip"
    archive.write_bytes(buf.getvalue())
    groups = console.find_people(page, archive)
    page.locator("#clusters .pick").nth(0).check()
    page.locator("#clusters .pick").nth(1).check()
    page.get_by_role("button", name="Merge selected").click()
    expect(groups).to_have_count(1)
    groups.first.get_by_placeholder("subject id").fill("one")
    groups.first.get_by_role("button", name="Name into gallery").click()
    expect(page.locator("#clusters .named", has_text="one")).to_have_count(1)
    faces = httpx.get(f"{base_url}/v1/subjects/one/faces", headers=HEADERS).json()
    assert len(faces) == 6
    blair = groups.first.locator(".thumbs li", has=page.locator("img[alt*='Tony_Blair_1']"))
    face = blair.locator("img").get_attribute("alt").split()[1]  # "Face N from ..."
    blair.get_by_role("button", name="is not one").click()
    expect(page.locator("#status")).to_contain_text(f"Face {face} is not one: remembered")
    expect(page.locator("#clusters img[alt*='Tony_Blair_1']")).to_have_count(0)
    expect(page.locator(f"#alone li[data-face='{face}']")).to_have_count(1)
    shot(page, "console-people-not-this-person")
    faces = httpx.get(f"{base_url}/v1/subjects/one/faces", headers=HEADERS).json()
    assert len(faces) == 5
    negatives = httpx.get(f"{base_url}/v1/subjects/one/negatives", headers=HEADERS).json()
    assert [n["source"] for n in negatives["negatives"]] == ["face"]
    page.get_by_role("button", name="Discard this job").click()
    expect(page.locator("#status")).to_contain_text("Job discarded")
