"""The archive checker under property-based fuzzing: whatever bytes a client uploads, the
answer is a clean unpack inside the destination or a 4xx archive error, never another
exception (hypothesis mutates real zips: flipped, inserted and cut bytes)."""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.archive import extract_zip
from service.errors import InvalidArchive, PayloadTooLarge
from tests.conftest import lfw


def seed_zip(compression: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        zf.write(lfw("Colin_Powell", 1), "Colin_Powell/1.jpg")
        zf.writestr("Colin_Powell/notes.txt", "x" * 300)
        zf.writestr("Tony_Blair/", "")
        zf.write(lfw("Tony_Blair", 1), "Tony_Blair/1.jpg")
    return buf.getvalue()


SEEDS = [seed_zip(zipfile.ZIP_DEFLATED), seed_zip(zipfile.ZIP_STORED)]

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("cut"), st.integers(0, 1 << 20), st.integers(1, 64)),
)


def mutate(data: bytes, edits: list[tuple[str, int, object]]) -> bytes:
    out = bytearray(data)
    for kind, at, arg in edits:
        at %= max(1, len(out))
        if kind == "flip":
            out[at] ^= int(arg)  # type: ignore[call-overload]
        elif kind == "insert":
            out[at:at] = bytes(arg)  # type: ignore[arg-type]
        else:
            del out[at : at + int(arg)]  # type: ignore[call-overload]
    return bytes(out)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(seed=st.sampled_from([0, 1]), edits=st.lists(mutation, min_size=1, max_size=6))
def test_mutated_zips_unpack_cleanly_or_are_invalid_archives(
    seed: int, edits: list[tuple[str, int, object]]
) -> None:
    data = mutate(SEEDS[seed], edits)
    with tempfile.TemporaryDirectory() as tmp:
        archive, dest = Path(tmp) / "a.zip", Path(tmp) / "out"
        archive.write_bytes(data)
        try:
            count = extract_zip(
                archive, dest, max_entries=100, max_unpacked_bytes=1 << 20, max_ratio=100
            )
        except (InvalidArchive, PayloadTooLarge) as exc:
            assert exc.status in (413, 422) and exc.message
            return
        written = [p for p in dest.rglob("*") if p.is_file()]
        assert len(written) == count
        root = dest.resolve()
        assert all(root in p.resolve().parents and not p.is_symlink() for p in written)
