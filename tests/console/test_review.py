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
