"""The web console in headless Chromium (Debian's, driven by Playwright), against a real server."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.vision.pipeline import FacePipeline
from tests.conftest import API_KEY, DATA, ROOT, lfw, make_settings
from tests.test_server import free_port, server

playwright = pytest.importorskip("playwright.sync_api")
expect = playwright.expect

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
GLINT = DATA / "glint24_aligned"
GROUP = DATA / "detection/insightface/t1.jpg"
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    with server(tmp_path_factory.mktemp("console") / "gallery", port):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: .ci/run installs the Debian package 'chromium'")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, base_url: str):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = context.new_page()
    outside: list[str] = []
    pg.on(
        "request",
        lambda r: (
            None
            if r.url.startswith(base_url) or r.url.startswith(("blob:", "data:"))
            else outside.append(r.url)
        ),
    )
    pg.on("dialog", lambda d: d.accept())  # confirmations and the rename prompt
    pg.goto(f"{base_url}/console/")
    yield pg
    assert not outside, f"the console loaded something from elsewhere: {outside}"
    context.close()


def sign_in(pg, key: str = API_KEY) -> None:  # type: ignore[no-untyped-def]
    pg.get_by_label("API key").fill(key)
    pg.get_by_label("API key").press("Enter")  # the keyboard alone


def find_people(pg, archive: Path):  # type: ignore[no-untyped-def]
    """Sign in, send ``archive`` to "Find people" and wait for its groups (at least two)."""
    sign_in(pg)
    pg.wait_for_selector("#view-gallery:not([hidden])")
    pg.get_by_role("link", name="People").click()
    pg.set_input_files("#cluster-zip", str(archive))
    pg.get_by_role("button", name="Find people").click()
    groups = pg.locator("#clusters li.cluster")
    expect(groups.nth(1)).to_be_visible(timeout=120_000)
    return groups


def shot(pg, name: str) -> None:  # type: ignore[no-untyped-def]
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def create_and_enroll(pg, subject: str, name: str, photos: list[Path]) -> None:  # type: ignore[no-untyped-def]
    pg.goto(pg.url.split("#")[0] + "#gallery")
    pg.get_by_label("Id", exact=True).fill(subject)
    pg.get_by_label("Name", exact=True).fill(name)
    pg.get_by_role("button", name="Create subject").click()
    pg.wait_for_selector(f"#detail-title:has-text('{subject}')")
    pg.set_input_files("#face-files", [str(p) for p in photos])
    pg.get_by_role("button", name="Upload").click()
    pg.wait_for_selector(f"#faces li >> nth={len(photos) - 1}")
    row = pg.locator(f"tr[data-subject='{subject}'] td").nth(2)
    assert row.inner_text() == str(len(photos))


def test_wrong_key_shows_a_readable_error(page) -> None:  # type: ignore[no-untyped-def]
    sign_in(page, "not-the-key")
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "API key was not accepted" in alert.inner_text()
    assert page.locator("#view-signin").is_visible()


def test_enroll_identify_verify_delete(page) -> None:  # type: ignore[no-untyped-def]
    sign_in(page)
    page.wait_for_selector("#view-gallery:not([hidden])")
    people = sorted(p.name for p in GLINT.iterdir() if p.is_dir())[:2]
    for person in people:
        photos = sorted((GLINT / person).glob("*.jpg"), key=lambda f: int(f.stem))[:3]
        create_and_enroll(page, person.lower().replace(" ", "_")[:40] or "p", person, photos)
    create_and_enroll(
        page, "powell", "Colin Powell", [lfw("Colin_Powell", 1), lfw("Colin_Powell", 3)]
    )
    shot(page, "console-gallery")

    # the group photo: every face boxed
    page.get_by_role("link", name="Identify").click()
    page.set_input_files("#identify-file", str(GROUP))
    page.get_by_role("button", name="Identify", exact=True).click()
    page.wait_for_selector(".face-box")
    assert page.locator(".face-box").count() == 6
    assert "6 face(s)" in page.locator("#identify-summary").inner_text()
    assert "(default" not in page.locator("#identify-summary").inner_text()  # a short line
    assert "impostor pairs" in page.locator("#identify-source").inner_text()
    shot(page, "console-identify-group")

    # a known face: labelled, and its candidates a keypress away
    page.set_input_files("#identify-file", str(lfw("Colin_Powell", 2)))
    page.get_by_role("button", name="Identify", exact=True).click()
    page.wait_for_selector(".face-box.match")
    assert "Colin Powell" in page.locator(".face-box.match").inner_text()
    page.locator(".face-box.match").focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("#candidates:not([hidden])")
    assert "powell" in page.locator("#candidate-list li").first.inner_text()
    assert re.search(r"quality [01]\.\d\d", page.locator("#candidate-quality").inner_text())
    assert re.search(r"q [01]\.\d\d", page.locator(".face-box.match").inner_text())
    shot(page, "console-identify")

    # a raw threshold instead of a FAR
    page.get_by_role("radio", name="Threshold").check()
    page.get_by_label("Cosine threshold").fill("0.99")
    page.get_by_role("button", name="Identify", exact=True).click()
    expect(page.locator("#identify-summary")).to_contain_text("0.990")
    assert page.locator(".face-box.match").count() == 0

    # verify: same person, then different people
    page.get_by_role("link", name="Verify").click()
    for a, b, decision in (
        (lfw("Colin_Powell", 1), lfw("Colin_Powell", 4), "Same person"),
        (lfw("Colin_Powell", 1), lfw("Tony_Blair", 1), "Different people"),
    ):
        page.set_input_files("#verify-a", str(a))
        page.set_input_files("#verify-b", str(b))
        page.get_by_role("button", name="Verify", exact=True).click()
        expect(page.locator("#verify-decision")).to_have_text(decision)
        assert "calibrat" in page.locator("#verify-source").inner_text()
        assert "of 1 found, quality" in page.locator("#verify-faces").inner_text()
    shot(page, "console-verify")

    # delete powell (the confirmation is accepted): he no longer matches
    page.get_by_role("link", name="Gallery").click()
    page.locator("tr[data-subject='powell']").get_by_role("button", name="Delete").click()
    page.wait_for_selector("tr[data-subject='powell']", state="detached")
    page.get_by_role("link", name="Identify").click()
    page.get_by_role("radio", name="FAR").check()
    page.set_input_files("#identify-file", str(lfw("Colin_Powell", 2)))
    page.get_by_role("button", name="Identify", exact=True).click()
    page.wait_for_selector(".face-box")
    assert page.locator(".face-box.match").count() == 0
    assert "unknown" in page.locator(".face-box").first.inner_text()

    # a file that is not an image: a readable message, not a blank page
    page.set_input_files(
        "#identify-file",
        files=[{"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"hello"}],
    )
    page.get_by_role("button", name="Identify", exact=True).click()
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "not an image" in alert.inner_text() and "invalid_image" in alert.inner_text()


def test_phone_width_and_keyboard(browser, base_url: str) -> None:  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    pg = context.new_page()
    pg.goto(f"{base_url}/console/")
    expect(pg.get_by_label("API key")).to_be_focused()  # the keyboard alone from here
    pg.keyboard.type(API_KEY)
    pg.keyboard.press("Enter")
    pg.wait_for_selector("#view-gallery:not([hidden])")
    width = pg.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"the page is {width}px wide at a phone's 375px"
    key_in_url = API_KEY in pg.url
    stored = pg.evaluate("sessionStorage.getItem('marginface.apiKey')")
    shot(pg, "console-phone")
    context.close()
    assert not key_in_url and stored == API_KEY


def test_console_can_be_switched_off(tmp_path: Path, pipeline: FacePipeline) -> None:
    app = create_app(make_settings(tmp_path, console_enabled=False), pipeline=pipeline)
    with TestClient(app) as c:
        assert c.get("/console").status_code == 404
        assert c.get("/console/").status_code == 404
        assert c.get("/console/console.js").status_code == 404
    app = create_app(make_settings(tmp_path), pipeline=pipeline)
    with TestClient(app) as c:
        r = c.get("/console/")
        assert r.status_code == 200 and "default-src 'self'" in r.headers["content-security-policy"]


def test_the_api_docs_render_without_network(browser, base_url: str) -> None:  # type: ignore[no-untyped-def]
    """Was: /docs loaded Swagger UI from a CDN and stayed blank offline."""
    context = browser.new_context()
    blocked: list[str] = []

    def only_local(route) -> None:  # type: ignore[no-untyped-def]
        if route.request.url.startswith(base_url):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
    pg = context.new_page()
    pg.goto(f"{base_url}/docs")
    expect(pg.locator(".swagger-ui .info .title")).to_contain_text("MarginFace", timeout=30_000)
    assert pg.locator(".opblock").count() >= 15  # every route listed
    # ReDoc needs a CDN: /redoc (a 404 before) leads to the offline Swagger UI instead
    redoc = pg.request.get(f"{base_url}/redoc")
    assert redoc.status == 200 and redoc.url.endswith("/docs"), (redoc.status, redoc.url)
    context.close()
    assert not blocked, f"the docs asked the network for {blocked}"


def test_layout_follows_the_window_and_the_sign_in_state(  # type: ignore[no-untyped-def]
    browser, base_url: str
) -> None:
    """Was: the nav showed on the sign-in screen (`nav { display: flex }` beat `hidden`), boxes
    were placed in pixels and drifted on resize, the chosen face was not highlighted, labels
    overflowed a 390-px phone sideways, and /favicon.ico was a 404."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = context.new_page()
    pg.goto(f"{base_url}/console/")
    assert not pg.locator("#tabs").is_visible()  # signed out: no navigation
    sign_in(pg)
    pg.wait_for_selector("#view-gallery:not([hidden])")
    assert pg.locator("#tabs").is_visible()
    pg.get_by_role("link", name="Identify").click()
    pg.set_input_files("#identify-file", str(GROUP))
    pg.get_by_role("button", name="Identify", exact=True).click()
    pg.wait_for_selector(".face-box")

    def offsets() -> list[tuple[float, float]]:
        """Each box's left and top as a share of the picture's size."""
        return pg.evaluate(
            """() => {
              const img = document.getElementById('identify-image').getBoundingClientRect();
              return [...document.querySelectorAll('.face-box')].map((b) => {
                const r = b.getBoundingClientRect();
                return [(r.left - img.left) / img.width, (r.top - img.top) / img.height]; }); }"""
        )

    wide = offsets()
    pg.set_viewport_size({"width": 390, "height": 844})  # a phone, upright
    pg.wait_for_timeout(300)
    narrow = offsets()
    assert len(wide) == len(narrow) == 6
    for (ax, ay), (bx, by) in zip(wide, narrow, strict=True):
        assert abs(ax - bx) < 0.02 and abs(ay - by) < 0.02  # still on the same faces
    width = pg.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width}px wide at 390px: it scrolls sideways"
    box = pg.locator(".face-box").nth(2)
    box.click()
    assert box.get_attribute("aria-pressed") == "true" and "selected" in box.get_attribute("class")
    assert pg.locator(".face-box.selected").count() == 1
    pg.locator(".face-box").nth(0).click()
    assert (
        pg.locator(".face-box.selected").count() == 1
        and box.get_attribute("aria-pressed") == "false"
    )
    assert pg.request.get(f"{base_url}/favicon.ico").status == 200
    pg.get_by_role("button", name="Sign out").click()
    assert not pg.locator("#tabs").is_visible()
    context.close()


def test_the_people_view_groups_a_zip_and_names_a_group(  # type: ignore[no-untyped-def]
    page, base_url: str, tmp_path: Path
) -> None:
    import io
    import zipfile

    import httpx

    owner = {}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k in range(3):
            for person in ("Colin_Powell", "Serena_Williams"):
                name = f"IMG_{len(owner):03d}.jpg"
                zf.write(lfw(person, k + 1), name)
                owner[name] = person
    archive = tmp_path / "pile.zip"
    archive.write_bytes(buf.getvalue())

    groups = find_people(page, archive)
    first = groups.nth(0)
    images = first.locator(".thumbs img")
    expect(images.first).to_be_visible()
    files = [images.nth(i).get_attribute("alt").rsplit(" ", 1)[1] for i in range(images.count())]
    assert len(files) == 3 and len({owner[f] for f in files}) == 1, files
    assert images.first.evaluate("img => img.naturalWidth") > 0  # the thumbnail really loaded
    shot(page, "console-people")

    first.get_by_placeholder("subject id").fill("pile-person")
    first.get_by_role("button", name="Name into gallery").click()
    expect(page.locator("#clusters .named").first).to_contain_text("pile-person")
    faces = httpx.get(
        f"{base_url}/v1/subjects/pile-person/faces", headers={"X-API-Key": API_KEY}
    ).json()
    assert len(faces) == 3

    page.get_by_role("button", name="Discard this job").click()
    expect(page.locator("#status")).to_contain_text("Job discarded")
    assert page.locator("#clusters li").count() == 0


@pytest.mark.parametrize("width", [390, 1280])
def test_identify_labels_stay_on_the_photo_and_apart(browser, base_url: str, width: int) -> None:  # type: ignore[no-untyped-def]
    """Six faces in a row (t1.jpg): every label inside the photo, no two overlapping, at a
    phone's width and a desktop's. Labels once ran off the right edge at 1280 px and overlapped
    or left the photo at 390 px."""
    context = browser.new_context(viewport={"width": width, "height": 844}, is_mobile=width < 500)
    pg = context.new_page()
    pg.goto(f"{base_url}/console/")
    sign_in(pg)
    pg.wait_for_selector("#view-gallery:not([hidden])")
    pg.goto(pg.url.split("#")[0] + "#identify")
    pg.set_input_files("#identify-file", str(GROUP))
    pg.get_by_role("button", name="Identify", exact=True).click()
    pg.wait_for_selector(".face-box")
    assert pg.locator(".face-box").count() == 6
    photo = pg.locator("#identify-image").bounding_box()
    labels = [pg.locator(".face-box span").nth(i) for i in range(6)]
    boxes = [label.bounding_box() for label in labels]
    shot(pg, f"console-identify-labels-{width}")
    context.close()
    assert all(b is not None for b in boxes), "a label is hidden"
    eps = 0.5
    for b in boxes:
        assert b["x"] >= photo["x"] - eps and b["y"] >= photo["y"] - eps, (b, photo)
        assert b["x"] + b["width"] <= photo["x"] + photo["width"] + eps, (b, photo)
        assert b["y"] + b["height"] <= photo["y"] + photo["height"] + eps, (b, photo)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            apart = (
                a["x"] + a["width"] <= b["x"] + eps
                or b["x"] + b["width"] <= a["x"] + eps
                or a["y"] + a["height"] <= b["y"] + eps
                or b["y"] + b["height"] <= a["y"] + eps
            )
            assert apart, (a, b)


def test_phone_width_keeps_labels_with_their_inputs_and_shows_disabled_paging(  # type: ignore[no-untyped-def]
    browser, base_url: str
) -> None:
    """At 390 px the "Name" label and its input once landed on different rows, and Previous /
    Next looked active on a single page (disabled, but drawn as any other button)."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    pg = context.new_page()
    pg.goto(f"{base_url}/console/")
    sign_in(pg)
    pg.wait_for_selector("#view-gallery:not([hidden])")
    for field in ("new-id", "new-name"):
        label = pg.locator(f"label[for='{field}']").bounding_box()
        box = pg.locator(f"#{field}").bounding_box()
        assert label is not None and box is not None
        middle = lambda b: b["y"] + b["height"] / 2  # noqa: E731
        assert abs(middle(label) - middle(box)) < 6, (field, label, box)
    assert pg.locator("#prev").is_disabled()
    opacity = float(pg.evaluate("getComputedStyle(document.getElementById('prev')).opacity"))
    shot(pg, "console-phone-gallery")
    context.close()
    assert opacity < 0.7, opacity
