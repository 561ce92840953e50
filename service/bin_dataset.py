"""insightface's verification ``.bin`` files (lfw.bin, cfp_fp.bin, agedb_30.bin, calfw.bin,
cplfw.bin): a pickle of ``(images, issame)``, where ``images`` holds 2N encoded 112x112 aligned
crops (pair i is images 2i and 2i+1) and ``issame`` N booleans. insightface scores them with
10 contiguous folds (``KFold(10, shuffle=False)``), which ``fold_of`` reproduces.

Framework-free (pickle and the image codec), so the service's ``marginface eval bin`` and the
training loop's validation read the same files the same way. A ``.bin`` is a pickle, and a pickle
can run code when loaded: the reader accepts only plain containers, bytes and booleans (and
numpy's uint8 arrays, which some published files use for the images) and refuses anything else.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from service.errors import MarginFaceError
from service.evaluation import Pair

if TYPE_CHECKING:
    from service.vision.pipeline import FacePipeline

BIN_CROP_PX = 112
#: the only globals a verification .bin may reference (numpy arrays of encoded bytes)
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class BinFormatError(MarginFaceError):
    """The file is not a verification .bin (or holds objects a .bin never holds)."""

    code = "invalid_bin"
    status = 422


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise BinFormatError(
            f"refusing to load {module}.{name}: a verification .bin holds only encoded images "
            "and booleans (a pickle naming other objects can run code)"
        )


@dataclass(frozen=True)
class BinPairs:
    """The pairs of one .bin: encoded crops (2 per pair) and whether each pair is one person."""

    images: list[bytes]
    issame: list[bool]

    def __len__(self) -> int:
        return len(self.issame)

    def folds(self) -> np.ndarray:
        """insightface's 10 contiguous folds over the pairs."""
        return fold_of(len(self.issame))

    def decode(self) -> np.ndarray:
        """(2N, 112, 112, 3) uint8 RGB crops; raises BinFormatError on a crop of another size."""
        crops = np.zeros((len(self.images), BIN_CROP_PX, BIN_CROP_PX, 3), dtype=np.uint8)
        for i, data in enumerate(self.images):
            with Image.open(io.BytesIO(data)) as img:
                crop = np.asarray(img.convert("RGB"))
            if crop.shape[:2] != (BIN_CROP_PX, BIN_CROP_PX):
                raise BinFormatError(f"image {i} is {crop.shape[1]}x{crop.shape[0]}, not 112x112")
            crops[i] = crop
        return crops


def fold_of(pairs: int, folds: int = 10) -> np.ndarray:
    """Fold of each pair: ``folds`` contiguous blocks, as sklearn's unshuffled KFold splits."""
    sizes = np.full(folds, pairs // folds)
    sizes[: pairs % folds] += 1
    return np.repeat(np.arange(folds), sizes)


def read_bin(path: Path) -> BinPairs:
    """Load a verification .bin; raises BinFormatError when it is not one."""
    with path.open("rb") as fh:
        try:
            loaded = _RestrictedUnpickler(fh, encoding="bytes").load()
        except BinFormatError:
            raise
        except Exception as exc:  # pickle raises many types on a file that is not one
            raise BinFormatError(f"{path} is not a verification .bin: {exc}") from exc
    if not (isinstance(loaded, (tuple, list)) and len(loaded) == 2):
        raise BinFormatError(f"{path}: expected a pickle of (images, issame)")
    images_raw, issame_raw = loaded
    images = [x.tobytes() if isinstance(x, np.ndarray) else x for x in images_raw]
    if not all(isinstance(x, bytes) for x in images):
        raise BinFormatError(f"{path}: the images must be encoded bytes")
    issame = [bool(x) for x in issame_raw]
    if len(images) != 2 * len(issame) or not issame:
        raise BinFormatError(
            f"{path}: {len(images)} images for {len(issame)} pairs (needs two per pair)"
        )
    return BinPairs(images, issame)


def encode_crop(crop: np.ndarray, quality: int = 95) -> bytes:
    """A 112x112 RGB crop as JPEG (what insightface's packing tools store)."""
    buffer = io.BytesIO()
    Image.fromarray(crop).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_bin(path: Path, crops: Sequence[np.ndarray], issame: Sequence[bool]) -> None:
    """Write (2N crops, N issame) in insightface's format, readable by its ``load_bin``."""
    if len(crops) != 2 * len(issame):
        raise ValueError(f"{len(crops)} crops for {len(issame)} pairs (needs two per pair)")
    for i, crop in enumerate(crops):
        if crop.shape != (BIN_CROP_PX, BIN_CROP_PX, 3) or crop.dtype != np.uint8:
            raise ValueError(f"crop {i} is {crop.shape} {crop.dtype}, not (112, 112, 3) uint8")
    payload = ([encode_crop(c) for c in crops], [bool(s) for s in issame])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    with tmp.open("wb") as fh:
        pickle.dump(payload, fh, protocol=4)
    tmp.replace(path)


def in_bin_order(pairs: Sequence[Pair]) -> list[Pair]:
    """Pairs reordered so that insightface's contiguous folds are the pairs file's folds (LFW's
    pairs.txt already lists them fold by fold; this keeps any other order honest)."""
    return sorted(pairs, key=lambda p: p.fold)


def crops_for_pairs(
    pipeline: FacePipeline, pairs: Sequence[Pair], *, progress: bool = False
) -> tuple[list[np.ndarray], list[str]]:
    """Two aligned 112x112 crops per pair, by ``marginface eval lfw``'s protocol (the face
    nearest the centre, one documented second detection pass), each photo aligned once.

    A photo with no face at all gets its central region resized (insightface's packed sets have
    no empty slot); returns (crops, the paths that needed it)."""
    import cv2
    from tqdm import tqdm

    from service.calibration import central_face
    from service.vision.image import decode_image

    if pipeline.embedder.input_size != (BIN_CROP_PX, BIN_CROP_PX):
        raise BinFormatError(
            f"a .bin holds 112x112 crops; {pipeline.embedder.manifest.name} takes "
            f"{pipeline.embedder.input_size}"
        )
    unique = sorted({p.a for p in pairs} | {p.b for p in pairs})
    aligned: dict[Path, np.ndarray] = {}
    no_face: list[str] = []
    for path in tqdm(unique, desc="aligning", unit="img", disable=not progress):
        image = decode_image(path.read_bytes())
        face, _ = central_face(pipeline, image)
        if face is not None:
            aligned[path] = pipeline.align(image, face.landmarks)
            continue
        no_face.append(str(path))
        h, w = image.shape[:2]
        side = min(h, w) // 2
        top, left = h // 2 - side // 2, w // 2 - side // 2
        region = image[top : top + side, left : left + side]
        aligned[path] = cv2.resize(region, (BIN_CROP_PX, BIN_CROP_PX), interpolation=cv2.INTER_AREA)
    crops = [aligned[path] for p in pairs for path in (p.a, p.b)]
    return crops, no_face


__all__ = [
    "BinFormatError",
    "BinPairs",
    "crops_for_pairs",
    "encode_crop",
    "fold_of",
    "in_bin_order",
    "read_bin",
    "write_bin",
]
