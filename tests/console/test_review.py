"""The console's review of people and of identify answers, in headless Chromium against a real
server (the fixtures of tests/console/test_console.py)."""

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


def test_faces_alone_are_shown_and_can_be_named(  # type: ignore[no-untyped-def]
    page, base_url: str, tmp_path: Path
) -> None:
    """Was: the faces in no group (here the three guardsmen behind Putin in
    Vladimir_Putin_0007) were not shown, so they could not be named."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for person, n in [("Vladimir_Putin", 7), ("Vladimir_Putin", 1), ("Colin_Powell", 1)]:
            zf.write(lfw(person, n), f"{person}_{n}.jpg")
        zf.write(lfw("Colin_Powell", 2), "Colin_Powell_2.jpg")
    archive = tmp_path / "guards.zip"
    archive.write_bytes(buf.getvalue())

    sign_in(page)
    page.wait_for_selector("#view-gallery:not([hidden])")
    page.get_by_role("link", name="People").click()
    page.set_input_files("#cluster-zip", str(archive))
    page.get_by_role("button", name="Find people").click()
    expect(page.locator("#clusters li.cluster").first).to_be_visible(timeout=120_000)
    alone = page.locator("#alone li.alone")
    expect(alone.nth(1)).to_be_visible()  # two guardsmen at least
    expect(page.locator("#alone-title")).to_be_visible()
    first = alone.first
    assert first.locator("img").evaluate("img => img.naturalWidth") > 0
    face = first.get_attribute("data-face")
    shot(page, "console-people-alone")
    first.get_by_placeholder("subject id").fill("guard-one")
    first.get_by_role("button", name="Name into gallery").click()
    expect(page.locator("#status")).to_contain_text(f"Named face {face} as guard-one")
    expect(page.locator(f"#alone li[data-face='{face}']")).to_have_count(0)
    expect(page.locator("#clusters .named", has_text="guard-one")).to_have_count(1)
    faces = httpx.get(
        f"{base_url}/v1/subjects/guard-one/faces", headers={"X-API-Key": API_KEY}
    ).json()
    assert len(faces) == 1
    page.get_by_role("button", name="Discard this job").click()
    expect(page.locator("#status")).to_contain_text("Job discarded")
    expect(page.locator("#alone li")).to_have_count(0)


def test_an_ambiguous_answer_is_shown_with_both_people(  # type: ignore[no-untyped-def]
    page, base_url: str
) -> None:
    """Two subjects that fit a face about equally well (the same man enrolled twice): with a
    margin the console says ambiguous, and names both, instead of picking one."""
    headers = {"X-API-Key": API_KEY}
    for sid, n in (("powell-a", 1), ("powell-b", 3)):
        r = httpx.post(
            f"{base_url}/v1/subjects",
            json={"id": sid, "name": f"Powell {sid[-1].upper()}"},
            headers=headers,
        )
        assert r.status_code == 201, r.text
        r = httpx.post(
            f"{base_url}/v1/subjects/{sid}/faces",
            files=[("files", ("p.jpg", lfw("Colin_Powell", n).read_bytes(), "image/jpeg"))],
            headers=headers,
            timeout=60,
        )
        assert r.status_code == 201, r.text
    sign_in(page)
    page.wait_for_selector("#view-gallery:not([hidden])")
    page.get_by_role("link", name="Identify").click()
    page.set_input_files("#identify-file", str(lfw("Colin_Powell", 2)))
    page.get_by_label("Ambiguity margin").fill("0.5")
    page.get_by_role("button", name="Identify", exact=True).click()
    box = page.locator(".face-box.ambiguous")
    expect(box).to_have_count(1, timeout=60_000)
    expect(box).to_contain_text("ambiguous")
    assert page.locator(".face-box.match").count() == 0
    expect(page.locator("#identify-summary")).to_contain_text("1 ambiguous")
    box.focus()
    page.keyboard.press("Enter")
    note = page.locator("#candidate-ambiguous")
    expect(note).to_be_visible()
    expect(note).to_contain_text("Powell A")
    expect(note).to_contain_text("Powell B")
    expect(page.locator("#candidate-list li").first).to_contain_text("of its faces agree")
    shot(page, "console-identify-ambiguous")
    # without a margin (the default) the better one is named
    page.get_by_label("Ambiguity margin").fill("")
    page.get_by_role("button", name="Identify", exact=True).click()
    expect(page.locator(".face-box.match")).to_have_count(1, timeout=60_000)
