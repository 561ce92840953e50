"""Bounded cost per request (issue 25, findings 2 and 4), tried over HTTP: an upload that is
small to send but costly to decode, or a body bigger than the route can use, is refused before
the work is done."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.reliability import decode_bombs as bombs


def test_a_progressive_jpeg_with_repeated_scans_is_422_before_decoding(client: TestClient) -> None:
    """Finding 2: a flat 6000x6000 progressive JPEG with its last scan repeated (200 scans,
    223 KB) decoded for 7.6 s of CPU on main and answered 200; 5,000 scans cost 66 s."""
    bomb = bombs.progressive_jpeg_bomb(200)
    r = client.post("/v1/identify", files={"image": ("bomb.jpg", bomb, "image/jpeg")})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "image_too_complex"
    assert r.json()["error"]["details"]["what"] == "JPEG scans"
